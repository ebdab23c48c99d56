"""Pure Twilio Voice: webhook forms to values, a call's state from its legs, and TwiML.

No I/O happens here. The hub verifies the signature first (``signature.verify``), then:

- :func:`parse_inbound_call` for the incoming-call webhook ``POST /webhooks/twilio/voice``
  (https://www.twilio.com/docs/voice/twiml#request-parameters);
- :func:`parse_call_status` for ``POST /webhooks/twilio/voice/status``, the status
  callbacks of a call and of the legs ``<Dial>`` makes (which carry ``ParentCallSid``,
  https://www.twilio.com/docs/voice/api/call-resource#statuscallback);
- :func:`parse_dial_result` for the ``action`` of ``<Dial>``/``<Enqueue>``/``<Record>``
  (https://www.twilio.com/docs/voice/twiml/dial#action);
- :func:`parse_recording_callback` for ``POST /webhooks/twilio/voice/recording``:
  recording status callbacks and transcription callbacks
  (https://www.twilio.com/docs/voice/api/recording#recordingstatuscallback,
  https://www.twilio.com/docs/voice/twiml/record#transcribecallback).

A malformed form raises :class:`~channels.twilio.errors.PayloadError` (answer 400).

One call, one event: Twilio reports a call and each leg it dials separately, out of
order. :func:`call_state` derives the event's status from everything known about the
legs (each leg's own status only moves forward), so the same facts in any order give the
same answer. An inbound call counts as answered only when an agent's leg is answered (the
parent goes ``in-progress`` as soon as Twilio runs our TwiML); it is *missed* when it ends
unanswered. In a click-to-call the parent is the agent's phone and the customer is the
dialled leg, so the customer's leg decides.

The TwiML the hub answers with is built in ``channels.twilio.twiml``.
"""

from __future__ import annotations

import dataclasses
import email.utils
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from channels.twilio.errors import PayloadError
from channels.twilio.forms import Form, form_items
from timeline.events import Channel, Direction, Event, Identity, IdentityKind, Kind, utcnow

__all__ = [
    "ANSWERED",
    "LEG_EVENTS",
    "TERMINAL",
    "CallUpdate",
    "Dequeued",
    "DialResult",
    "Leg",
    "RecordingUpdate",
    "TranscriptionUpdate",
    "call_state",
    "is_missed",
    "parse_agent_client",
    "parse_call_status",
    "parse_dequeued",
    "parse_dial_result",
    "parse_inbound_call",
    "parse_recording_callback",
    "recording_media_url",
]

#: Twilio's call statuses, https://www.twilio.com/docs/voice/api/call-resource#call-status-values
STATUSES = frozenset(
    {"queued", "initiated", "ringing", "in-progress", "completed", "busy", "no-answer"}
    | {"failed", "canceled"}
)
TERMINAL = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
#: A leg in one of these was picked up (a leg only completes after being answered).
ANSWERED = frozenset({"in-progress", "completed"})
#: What we ask Twilio to report of every leg we dial.
LEG_EVENTS = ("initiated", "ringing", "answered", "completed")

_SID = re.compile(r"[A-Za-z0-9]{2,64}")
_WORD = re.compile(r"[a-z_-]{1,32}")
#: A Twilio Client identity (alphanumerics and underscores; we allow a few more).
_CLIENT = re.compile(r"[A-Za-z0-9_.@+-]{1,121}")
_CALLER_DATA = (
    "AccountSid",
    "CallerName",
    "FromCountry",
    "FromState",
    "FromCity",
    "FromZip",
    "ToCountry",
    "ToState",
    "ToCity",
    "ToZip",
    "StirVerstat",
)


class _Fields:
    """First value per key, with validated access that raises PayloadError."""

    def __init__(self, form: Form) -> None:
        self._values: dict[str, str] = {}
        for key, value in form_items(form):
            self._values.setdefault(key, value)

    def text(self, name: str) -> str | None:
        value = self._values.get(name, "").strip()
        return value or None

    def require(self, name: str) -> str:
        value = self.text(name)
        if value is None:
            raise PayloadError(name, "missing")
        return value

    def sid(self, name: str, *, required: bool = True) -> str | None:
        value = self.require(name) if required else self.text(name)
        if value is not None and not _SID.fullmatch(value):
            raise PayloadError(name, "not a Twilio SID")
        return value

    def word(self, name: str, *, required: bool = False) -> str | None:
        value = self.require(name) if required else self.text(name)
        if value is None:
            return None
        value = value.lower()
        if not _WORD.fullmatch(value):
            raise PayloadError(name, "not a status word")
        return value

    def status(self, name: str, *, required: bool = True) -> str | None:
        value = self.word(name, required=required)
        if value is not None and value not in STATUSES:
            raise PayloadError(name, f"not a call status: {value!r}")
        return value

    def integer(self, name: str) -> int | None:
        raw = self.text(name)
        if raw is None:
            return None
        if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
            raise PayloadError(name, f"expected a whole number, got {raw[:20]!r}")
        return int(raw)

    def url(self, name: str) -> str | None:
        value = self.text(name)
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise PayloadError(name, "not an http(s) URL")
        return value

    def timestamp(self, name: str) -> datetime | None:
        raw = self.text(name)
        if raw is None:
            return None
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            raise PayloadError(name, "not an RFC 2822 date") from None
        return when if when.tzinfo is not None else None

    def data(self, names: Iterable[str]) -> dict[str, Any]:
        return {name: value for name in names if (value := self.text(name)) is not None}


# -- webhook forms ----------------------------------------------------------------------------


def parse_inbound_call(form: Form, *, received_at: datetime | None = None) -> list[Event]:
    """One inbound ``call`` event (status ``ringing``) for the incoming-call webhook.

    ``external_id`` is the CallSid; the caller (``From``) is the customer's side, so an
    unknown caller becomes a new customer when ingested. ``From`` may be a withheld
    number (``anonymous``) that resolves to nobody: ingestion rejects such an event, and
    the hub routes the call all the same. ``data`` holds ``AccountSid``, ``CallerName``
    and the geographic fields Twilio gives, and ``answered: false``.
    https://www.twilio.com/docs/voice/twiml#request-parameters
    """
    fields = _Fields(form)
    sid = fields.sid("CallSid")
    assert sid is not None
    caller = fields.require("From")
    called = fields.require("To")
    status = fields.status("CallStatus", required=False) or "ringing"
    if status in TERMINAL:
        raise PayloadError("CallStatus", f"an incoming call cannot start {status}")
    direction = fields.word("Direction") or "inbound"
    if direction != "inbound":
        raise PayloadError("Direction", f"expected inbound, got {direction!r}")
    data = fields.data(_CALLER_DATA)
    data["answered"] = False
    event = Event(
        channel=Channel.VOICE,
        kind=Kind.CALL,
        direction=Direction.INBOUND,
        occurred_at=received_at or utcnow(),
        external_id=sid,
        status="ringing",
        sender=Identity(IdentityKind.PHONE, caller),
        recipient=Identity(IdentityKind.PHONE, called),
        data=data,
    )
    return [event]


@dataclasses.dataclass(frozen=True, slots=True)
class CallUpdate:
    """A status callback of a call or of a leg (``parent_sid`` set) it dialled.

    Numbers are left out of ``repr`` so that logging an update leaks none.
    """

    call_sid: str
    status: str
    parent_sid: str | None = None
    direction: str | None = None
    from_: str | None = dataclasses.field(default=None, repr=False)
    to: str | None = dataclasses.field(default=None, repr=False)
    duration: int | None = None
    sequence: int | None = None
    timestamp: datetime | None = None


def parse_call_status(form: Form) -> CallUpdate:
    """A call status callback: ``CallSid``, ``CallStatus`` and, for a leg, ``ParentCallSid``.

    ``CallDuration`` (seconds) comes with ``completed``; ``SequenceNumber`` and
    ``Timestamp`` when Twilio sends them. Callbacks arrive out of order; see
    :func:`call_state`. https://www.twilio.com/docs/voice/api/call-resource#statuscallback
    """
    fields = _Fields(form)
    sid = fields.sid("CallSid")
    status = fields.status("CallStatus")
    assert sid is not None and status is not None
    return CallUpdate(
        call_sid=sid,
        status=status,
        parent_sid=fields.sid("ParentCallSid", required=False),
        direction=fields.word("Direction"),
        from_=fields.text("From"),
        to=fields.text("To"),
        duration=fields.integer("CallDuration"),
        sequence=fields.integer("SequenceNumber"),
        timestamp=fields.timestamp("Timestamp"),
    )


#: Values of ``QueueResult`` in the ``<Enqueue>`` action request.
QueueResult = Literal[
    "bridged",
    "bridging-in-process",
    "queue-full",
    "system-error",
    "error",
    "redirected",
    "leave",
]


@dataclasses.dataclass(frozen=True, slots=True)
class DialResult:
    """The ``action`` request after ``<Dial>``, ``<Enqueue>`` or ``<Record>`` ends."""

    call_sid: str
    dial_call_sid: str | None = None
    dial_status: str | None = None
    dial_duration: int | None = None
    queue_result: str | None = None
    queue_seconds: int | None = None

    @property
    def connected(self) -> bool:
        """Whether the caller talked to an agent (the dialled leg or the queue bridged)."""
        return self.dial_status == "completed" or self.queue_result in (
            "bridged",
            "bridging-in-process",
        )


def parse_dial_result(form: Form) -> DialResult:
    """The action request of ``<Dial>`` (``DialCallStatus``, ``DialCallSid``,
    ``DialCallDuration``) or ``<Enqueue>`` (``QueueResult``, ``QueueTime``); a ``<Record>``
    action carries neither.
    https://www.twilio.com/docs/voice/twiml/dial#action,
    https://www.twilio.com/docs/voice/twiml/enqueue#action
    """
    fields = _Fields(form)
    sid = fields.sid("CallSid")
    assert sid is not None
    return DialResult(
        call_sid=sid,
        dial_call_sid=fields.sid("DialCallSid", required=False),
        dial_status=fields.status("DialCallStatus", required=False),
        dial_duration=fields.integer("DialCallDuration"),
        queue_result=fields.word("QueueResult"),
        queue_seconds=fields.integer("QueueTime"),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Dequeued:
    """Twilio's request to a ``<Queue url>``: an agent's call took a caller from the queue.

    ``call_sid`` is the caller's call (the one that waited), ``dequeuing_sid`` the agent's.
    """

    call_sid: str
    dequeuing_sid: str | None = None
    queue_sid: str | None = None
    queue_seconds: int | None = None


def parse_dequeued(form: Form) -> Dequeued:
    """The request to ``<Queue url>`` before the dequeued caller is bridged to the agent:
    ``CallSid``, ``QueueSid``, ``QueueTime`` and ``DequeingCallSid`` (Twilio's spelling;
    ``DequeueingCallSid`` is accepted too). https://www.twilio.com/docs/voice/twiml/queue#url
    """
    fields = _Fields(form)
    sid = fields.sid("CallSid")
    assert sid is not None
    dequeuing = fields.sid("DequeingCallSid", required=False) or fields.sid(
        "DequeueingCallSid", required=False
    )
    return Dequeued(
        call_sid=sid,
        dequeuing_sid=dequeuing,
        queue_sid=fields.sid("QueueSid", required=False),
        queue_seconds=fields.integer("QueueTime"),
    )


def parse_agent_client(form: Form) -> str:
    """The client identity (``client:alice``) of an agent's browser placing a call to the
    hub (the Voice URL of the TwiML App their Voice SDK uses); PayloadError otherwise.
    https://www.twilio.com/docs/voice/sdks/javascript/get-started#twiml-app
    """
    fields = _Fields(form)
    fields.sid("CallSid")
    caller = fields.require("From")
    identity = caller.removeprefix("client:")
    if identity == caller or not _CLIENT.fullmatch(identity):
        raise PayloadError("From", "not a Twilio Client identity")
    return caller


@dataclasses.dataclass(frozen=True, slots=True)
class RecordingUpdate:
    """A recording status callback.

    ``url`` is where the audio is at Twilio; it is for nothing but checking: the hub
    builds the media URL from ``TWILIO_API_BASE`` and the sid
    (:func:`recording_media_url`), and never stores or shows the provider's URL.
    """

    call_sid: str
    recording_sid: str
    status: str
    duration: int | None
    channels: int | None
    source: str | None
    url: str | None = dataclasses.field(default=None, repr=False)
    error_code: int | None = None

    def summary(self) -> dict[str, Any]:
        """What the call's event keeps of the recording (no provider URL)."""
        out: dict[str, Any] = {"sid": self.recording_sid, "status": self.status}
        for key, value in (
            ("duration", self.duration),
            ("channels", self.channels),
            ("source", self.source),
            ("error_code", self.error_code or None),
        ):
            if value is not None:
                out[key] = value
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class TranscriptionUpdate:
    """A transcription callback of a recorded voicemail. ``text`` is never logged."""

    call_sid: str
    transcription_sid: str
    recording_sid: str | None
    status: str
    text: str | None = dataclasses.field(default=None, repr=False)


def parse_recording_callback(form: Form) -> RecordingUpdate | TranscriptionUpdate:
    """A recording status callback, or a transcription callback if it has
    ``TranscriptionSid``; both go to ``/webhooks/twilio/voice/recording``.
    https://www.twilio.com/docs/voice/api/recording#recordingstatuscallback,
    https://www.twilio.com/docs/voice/twiml/record#transcribecallback
    """
    fields = _Fields(form)
    sid = fields.sid("CallSid")
    assert sid is not None
    transcription = fields.sid("TranscriptionSid", required=False)
    if transcription is not None:
        status = fields.word("TranscriptionStatus") or "completed"
        text = fields.text("TranscriptionText")
        if text is not None and len(text) > 20_000:
            raise PayloadError("TranscriptionText", "longer than 20000 characters")
        return TranscriptionUpdate(
            call_sid=sid,
            transcription_sid=transcription,
            recording_sid=fields.sid("RecordingSid", required=False),
            status=status,
            text=text if status == "completed" else None,
        )
    recording = fields.sid("RecordingSid")
    assert recording is not None
    return RecordingUpdate(
        call_sid=sid,
        recording_sid=recording,
        status=fields.word("RecordingStatus") or "completed",
        duration=fields.integer("RecordingDuration"),
        channels=fields.integer("RecordingChannels"),
        source=fields.text("RecordingSource"),
        url=fields.url("RecordingUrl"),
        error_code=fields.integer("ErrorCode"),
    )


def recording_media_url(api_base: str, account_sid: str, recording_sid: str) -> str:
    """Where the audio of a recording is (WAV), on ``TWILIO_API_BASE``.

    Fetched with the account's credentials (HTTP Basic).
    https://www.twilio.com/docs/voice/api/recording#fetch-a-recording-media-file
    """
    return (
        f"{api_base.rstrip('/')}/2010-04-01/Accounts/{quote(account_sid, safe='')}"
        f"/Recordings/{quote(recording_sid, safe='')}.wav"
    )


# -- one call, one event -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Leg:
    """What is known of one leg of a call: its status so far (forward-only)."""

    state: str
    duration: int | None = None


def call_state(
    direction: str,
    parent: str | None,
    legs: Sequence[Leg],
    *,
    answered: bool,
) -> str:
    """The status of a call's event from its parent's status and its dialled legs.

    Inbound (the parent is the customer's call): ``ringing`` until an agent's leg is
    answered (``in-progress``), then the parent's terminal status. Outbound click-to-call
    (the parent rings the agent, the dialled leg the customer): the customer's leg
    decides; if the parent ends first, the call is ``completed`` if the customer answered,
    the agent leg's failure (``no-answer``, ``busy``...) if the agent never picked up,
    and ``canceled`` otherwise. ``queued`` while nothing is known yet.
    https://www.twilio.com/docs/voice/api/call-resource#call-status-values
    """
    if direction == Direction.INBOUND.value:
        if parent in TERMINAL:
            assert parent is not None
            return parent
        return "in-progress" if answered else "ringing"
    terminal_legs = [leg.state for leg in legs if leg.state in TERMINAL]
    if "completed" in terminal_legs:
        return "completed"
    if any(leg.state == "in-progress" for leg in legs) and parent not in TERMINAL:
        return "in-progress"
    if parent in TERMINAL:
        if answered:
            return "completed"
        if parent != "completed":
            assert parent is not None
            return parent
        return terminal_legs[-1] if terminal_legs else "canceled"
    if terminal_legs:
        return terminal_legs[-1]
    if legs:
        return "ringing"
    return "initiated" if parent is not None else "queued"


def is_missed(direction: str, status: str, *, answered: bool) -> bool:
    """Whether an inbound call ended without an agent answering it."""
    return direction == Direction.INBOUND.value and status in TERMINAL and not answered
