"""Consent per customer, channel and purpose, changed only by consent events.

A consent change is an event on the timeline (kind ``consent``; ``status`` is the new
state; ``data`` names the purposes and what caused it, e.g. the keyword STOP or Twilio
error 21610), and ``timeline.ingest`` applies it to the ``consents`` table in the same
transaction. The latest change by time wins, so a late-arriving older event cannot undo
a newer one. No row means no recorded objection.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from timeline.events import Channel, Direction, Event, Identity, Kind
from timeline.records import iso
from timeline.schema import consents

OPTED_OUT = "opted_out"
OPTED_IN = "opted_in"
TRANSACTIONAL = "transactional"
MARKETING = "marketing"
PURPOSES = (TRANSACTIONAL, MARKETING)


def change(
    channel: Channel,
    state: str,
    *,
    occurred_at: datetime,
    external_id: str,
    purposes: Sequence[str] = PURPOSES,
    cause: str,
    sender: Identity | None = None,
    customer_id: str | None = None,
    direction: Direction = Direction.INBOUND,
) -> Event:
    """The consent event for a change of ``state`` on ``channel`` for ``purposes``."""
    if state not in (OPTED_OUT, OPTED_IN):
        raise ValueError(f"unknown consent state {state!r}")
    unknown = [p for p in purposes if p not in PURPOSES]
    if unknown:
        raise ValueError(f"unknown consent purpose {unknown[0]!r}")
    return Event(
        channel=channel,
        kind=Kind.CONSENT,
        direction=direction,
        occurred_at=occurred_at,
        external_id=external_id,
        status=state,
        text=f"{'Opted out of' if state == OPTED_OUT else 'Opted in to'} {channel.value} "
        f"({', '.join(purposes)}): {cause}",
        sender=sender,
        customer_id=customer_id,
        data={"state": state, "purposes": list(purposes), "cause": cause},
    )


async def apply(
    conn: AsyncConnection,
    customer_id: str,
    channel: str,
    purposes: Sequence[str],
    state: str,
    *,
    at: datetime,
    event_id: str,
) -> None:
    """Record ``state`` for each purpose unless a newer change is already recorded."""
    for purpose in purposes:
        row = (
            await conn.execute(
                sa.select(consents.c.updated_at).where(
                    consents.c.customer_id == customer_id,
                    consents.c.channel == channel,
                    consents.c.purpose == purpose,
                )
            )
        ).one_or_none()
        if row is None:
            await conn.execute(
                consents.insert().values(
                    customer_id=customer_id,
                    channel=channel,
                    purpose=purpose,
                    state=state,
                    updated_at=at,
                    event_id=event_id,
                )
            )
        elif row.updated_at <= at:
            await conn.execute(
                consents.update()
                .where(
                    consents.c.customer_id == customer_id,
                    consents.c.channel == channel,
                    consents.c.purpose == purpose,
                )
                .values(state=state, updated_at=at, event_id=event_id)
            )


async def objection(
    conn: AsyncConnection, customer_id: str, channel: str, purpose: str
) -> dict[str, Any] | None:
    """Why the customer must not get ``purpose`` messages on ``channel``, or None."""
    row = (
        (
            await conn.execute(
                sa.select(consents).where(
                    consents.c.customer_id == customer_id,
                    consents.c.channel == channel,
                    consents.c.purpose == purpose,
                )
            )
        )
        .mappings()
        .one_or_none()
    )
    if row is None or row["state"] != OPTED_OUT:
        return None
    return {
        "channel": channel,
        "purpose": purpose,
        "since": iso(row["updated_at"]),
        "event_id": row["event_id"],
    }
