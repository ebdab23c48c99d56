"""Spacing sends per sending number (``TWILIO_SMS_RATE`` messages per second).

A US long code sends one segment a second; faster, Twilio queues and then fails with
30001/21611 (https://help.twilio.com/articles/115002943027). Each key gets evenly spaced
slots: a burst of N waits N/rate seconds in all instead of overflowing the carrier.
"""

from __future__ import annotations

import asyncio
import time


class Spacer:
    """At most ``rate`` acquisitions per second per key; ``rate`` 0 means no limit."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._next: dict[str, float] = {}

    async def acquire(self, key: str) -> None:
        """Wait for this key's next slot."""
        now = time.monotonic()
        slot = max(now, self._next.get(key, now))
        if self.rate > 0:
            self._next[key] = slot + 1.0 / self.rate
        if slot > now:
            await asyncio.sleep(slot - now)

    def slow_down(self, key: str, seconds: float) -> None:
        """Push this key's next slot back (the carrier said we are too fast)."""
        now = time.monotonic()
        self._next[key] = max(self._next.get(key, now), now) + seconds
