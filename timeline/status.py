"""Forward-only delivery status, per channel.

Providers send status callbacks out of order (Twilio says so in its docs:
https://www.twilio.com/docs/messaging/guides/track-outbound-message-status), so a late
``sent`` must never overwrite ``delivered``. Each channel has a rank table; a status moves
only to a higher rank, and never away from a terminal state.
"""

from __future__ import annotations

from timeline.events import Channel

_MESSAGE_RANKS = {
    "scheduled": 0,
    "accepted": 1,
    "queued": 2,
    "sending": 3,
    "sent": 4,
    "receiving": 4,
    "received": 5,
    "delivered": 6,
    "undelivered": 7,
    "failed": 7,
    "skipped": 7,
    "read": 8,
    "canceled": 8,
}

#: Twilio call statuses: https://www.twilio.com/docs/voice/api/call-resource#call-status-values
_CALL_RANKS = {
    "queued": 0,
    "initiated": 1,
    "ringing": 2,
    "in-progress": 3,
    "completed": 4,
    "busy": 4,
    "no-answer": 4,
    "failed": 4,
    "canceled": 4,
}

_EMAIL_RANKS = {
    "draft": 0,
    "queued": 1,
    "sending": 2,
    "sent": 3,
    "received": 3,
    "delivered": 4,
    "bounced": 5,
    "failed": 5,
}

_MEETING_RANKS = {"tentative": 0, "confirmed": 1, "cancelled": 2}

RANKS: dict[Channel, dict[str, int]] = {
    Channel.SMS: _MESSAGE_RANKS,
    Channel.SOCIAL: _MESSAGE_RANKS,
    Channel.VOICE: _CALL_RANKS,
    Channel.EMAIL: _EMAIL_RANKS,
    Channel.CALENDAR: _MEETING_RANKS,
}

#: States nothing may follow. ``read`` after ``delivered`` is allowed (WhatsApp, Messenger),
#: but nothing after ``undelivered``/``failed``.
TERMINAL: dict[Channel, frozenset[str]] = {
    Channel.SMS: frozenset({"undelivered", "failed", "skipped", "received", "canceled"}),
    Channel.SOCIAL: frozenset({"failed", "read", "received", "skipped"}),
    Channel.VOICE: frozenset({"completed", "busy", "no-answer", "failed", "canceled"}),
    Channel.EMAIL: frozenset({"bounced", "failed"}),
    Channel.CALENDAR: frozenset({"cancelled"}),
}


def advances(channel: Channel | str, current: str | None, new: str | None) -> bool:
    """Whether ``new`` may replace ``current`` on this channel.

    Unknown statuses are accepted only over nothing, so an unrecognised callback cannot
    move a known state backwards.
    """
    if new is None or new == current:
        return False
    if current is None:
        return True
    ch = Channel(channel)
    if current in TERMINAL.get(ch, frozenset()):
        return False
    ranks = RANKS.get(ch)
    if ranks is None:
        return False
    if current not in ranks:
        return new in ranks
    if new not in ranks:
        return False
    return ranks[new] > ranks[current]
