"""What the Twilio REST API says about one message or call, as plain frozen values.

``client.py`` returns these instead of the SDK's resource objects, so nothing outside
this package depends on the SDK. Fields follow the Message and Call resources:
https://www.twilio.com/docs/messaging/api/message-resource and
https://www.twilio.com/docs/voice/api/call-resource
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

__all__ = ["CallRecord", "MessageRecord"]


@dataclasses.dataclass(frozen=True, slots=True)
class MessageRecord:
    """One Message resource. ``direction`` is ``inbound``, ``outbound-api``, ... as Twilio says.

    Numbers and ``body`` are left out of ``repr`` so that logging a record leaks neither.
    """

    sid: str
    status: str
    direction: str
    from_: str | None = dataclasses.field(repr=False)
    to: str | None = dataclasses.field(repr=False)
    body: str | None = dataclasses.field(default=None, repr=False)
    error_code: int | None = None
    error_message: str | None = None
    num_segments: int | None = None
    num_media: int | None = None
    date_created: datetime | None = None
    date_sent: datetime | None = None
    date_updated: datetime | None = None
    account_sid: str | None = None
    messaging_service_sid: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class CallRecord:
    """One Call resource (click-to-call, settling an unknown outcome)."""

    sid: str
    status: str
    direction: str
    from_: str | None = dataclasses.field(repr=False)
    to: str | None = dataclasses.field(repr=False)
    duration: int | None = None
    date_created: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    account_sid: str | None = None
