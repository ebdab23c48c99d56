"""A writer process for the crash tests: ingests SMS events through ``timeline.ingest``.

``python -m tests.security.crash_writer URL NAME COUNT``: events ``NAME-0`` .. ``NAME-N``
from ten senders shared by every writer (so processes race on the same customers), one
transaction each, as separate hub processes on one SQLite file would.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta

from timeline.db import Database
from timeline.events import Channel, Direction, Event, Identity, IdentityKind, Kind
from timeline.ingest import ingest

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
OURS = Identity(IdentityKind.PHONE, "+14155550199")


def event(name: str, i: int) -> Event:
    """An inbound SMS, external id ``name-i``."""
    return Event(
        channel=Channel.SMS,
        kind=Kind.MESSAGE,
        direction=Direction.INBOUND,
        occurred_at=T0 + timedelta(seconds=i),
        external_id=f"{name}-{i}",
        status="received",
        text=f"message {i} of {name}",
        sender=Identity(IdentityKind.PHONE, f"+1415555{1000 + i % 10}"),
        recipient=OURS,
    )


async def main(url: str, name: str, count: int) -> None:
    db = Database.from_url(url)
    try:
        for i in range(count):
            await ingest(db, [event(name, i)], region="US")
            print(i, flush=True)
    finally:
        await db.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
