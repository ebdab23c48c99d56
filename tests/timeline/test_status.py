"""Forward-only delivery status (timeline.status.advances), as a table."""

from __future__ import annotations

import pytest

from timeline.events import Channel
from timeline.status import RANKS, TERMINAL, advances

SMS, SOCIAL, VOICE, EMAIL, CAL, NOTE = (
    Channel.SMS,
    Channel.SOCIAL,
    Channel.VOICE,
    Channel.EMAIL,
    Channel.CALENDAR,
    Channel.NOTE,
)


@pytest.mark.parametrize(
    ("channel", "current", "new", "expected"),
    [
        # Anything known or not replaces nothing; nothing never replaces anything.
        (SMS, None, "queued", True),
        (SMS, None, "whatever", True),
        (NOTE, None, "done", True),
        (SMS, "queued", None, False),
        (SMS, "sent", "sent", False),
        # Twilio message lifecycle (RELIABILITY 4).
        (SMS, "accepted", "queued", True),
        (SMS, "queued", "sending", True),
        (SMS, "queued", "sent", True),
        (SMS, "sent", "delivered", True),
        (SMS, "delivered", "sent", False),
        (SMS, "delivered", "queued", False),
        (SMS, "sent", "queued", False),
        (SMS, "sent", "undelivered", True),
        (SMS, "undelivered", "sent", False),
        (SMS, "undelivered", "delivered", False),
        (SMS, "failed", "delivered", False),
        (SMS, "failed", "read", False),
        (SMS, "delivered", "read", True),
        (SMS, "received", "delivered", False),
        (SMS, "scheduled", "canceled", True),
        (SMS, "canceled", "sent", False),
        # Unknown statuses never move a known one; a known one replaces an unknown one.
        (SMS, "delivered", "mystery", False),
        (SMS, "queued", "mystery", False),
        (SMS, "mystery", "delivered", True),
        (SMS, "mystery", "other-mystery", False),
        # Meta: read, delivered, sent -> read (RELIABILITY 13).
        (SOCIAL, "sent", "delivered", True),
        (SOCIAL, "delivered", "read", True),
        (SOCIAL, "read", "delivered", False),
        (SOCIAL, "read", "sent", False),
        (SOCIAL, "failed", "read", False),
        # Calls.
        (VOICE, "queued", "ringing", True),
        (VOICE, "ringing", "in-progress", True),
        (VOICE, "in-progress", "completed", True),
        (VOICE, "in-progress", "ringing", False),
        (VOICE, "completed", "in-progress", False),
        (VOICE, "completed", "busy", False),
        (VOICE, "ringing", "no-answer", True),
        (VOICE, "no-answer", "completed", False),
        (VOICE, "busy", "ringing", False),
        (VOICE, "canceled", "ringing", False),
        # Email.
        (EMAIL, "queued", "sent", True),
        (EMAIL, "sent", "delivered", True),
        (EMAIL, "delivered", "sent", False),
        (EMAIL, "delivered", "bounced", True),
        (EMAIL, "bounced", "delivered", False),
        (EMAIL, "sent", "queued", False),
        # Calendar.
        (CAL, "tentative", "confirmed", True),
        (CAL, "confirmed", "tentative", False),
        (CAL, "confirmed", "cancelled", True),
        (CAL, "cancelled", "confirmed", False),
        # A channel without a rank table only ever sets a status once.
        (NOTE, "open", "closed", False),
        # Plain strings are accepted for the channel.
        ("sms", "sent", "delivered", True),
        ("voice", "completed", "ringing", False),
    ],
)
def test_advances(
    channel: Channel | str, current: str | None, new: str | None, expected: bool
) -> None:
    assert advances(channel, current, new) is expected


def test_callbacks_in_any_order_end_at_the_highest_rank() -> None:
    def fold(channel: Channel, statuses: list[str]) -> str | None:
        current: str | None = None
        for status in statuses:
            if advances(channel, current, status):
                current = status
        return current

    assert fold(SMS, ["delivered", "sent", "queued"]) == "delivered"
    assert fold(SMS, ["queued", "sent", "delivered"]) == "delivered"
    assert fold(SMS, ["undelivered", "sent"]) == "undelivered"
    assert fold(SOCIAL, ["read", "delivered", "sent"]) == "read"
    assert fold(VOICE, ["completed", "ringing", "in-progress"]) == "completed"


def test_terminal_states_are_ranked() -> None:
    for channel, terminal in TERMINAL.items():
        assert terminal <= set(RANKS[channel]), channel
        for state in terminal:
            for other in RANKS[channel]:
                assert not advances(channel, state, other), (channel, state, other)


def test_unknown_channel_value_is_an_error() -> None:
    with pytest.raises(ValueError):
        advances("carrier-pigeon", "sent", "delivered")
