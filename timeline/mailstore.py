"""What the email channel keeps besides events: folder checkpoints, thread keys, bounces.

- A checkpoint per IMAP folder: its UIDVALIDITY and the last UID stored (RFC 4549 4.1:
  a new UIDVALIDITY voids the cached UIDs). While a first sync (newest first) is under
  way, two more rows keep its progress (the UID it will end at, and the lowest UID
  stored so far), under the folder's name plus a line break, which no IMAP folder name
  holds (RFC 3501 quoted strings exclude CR and LF); the checkpoint removes them.
- Thread keys: each Message-ID (and subject key) maps to its thread; a new id is added
  only if absent, never overwritten, and a subject key points at its newest thread.
- Bounced addresses: a hard bounce (5.x.x, RFC 3463) makes an address undeliverable
  until mail from it arrives again; a soft one (4.x.x) is remembered but does not block.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from timeline.events import utcnow
from timeline.records import iso
from timeline.schema import bounces, events, mail_checkpoints, thread_keys
from timeline.sql import chunks, insert_ignoring, upsert


async def load_checkpoint(conn: AsyncConnection, folder: str) -> tuple[int, int] | None:
    """(uidvalidity, last_uid) of a folder, if it was read before."""
    row = (
        await conn.execute(
            sa.select(mail_checkpoints.c.uidvalidity, mail_checkpoints.c.last_uid).where(
                mail_checkpoints.c.folder == folder
            )
        )
    ).one_or_none()
    return None if row is None else (int(row.uidvalidity), int(row.last_uid))


_TOP = "\nfirst-sync-top"
_BELOW = "\nfirst-sync-below"


async def save_checkpoint(
    conn: AsyncConnection, folder: str, uidvalidity: int, last_uid: int
) -> None:
    """Record how far a folder is read (and that its first sync is done)."""
    values = {"uidvalidity": uidvalidity, "last_uid": last_uid, "updated_at": utcnow()}
    insert = upsert(conn, mail_checkpoints)
    await conn.execute(
        insert.on_conflict_do_update(index_elements=["folder"], set_=values).values(
            folder=folder, **values
        )
    )
    await conn.execute(
        mail_checkpoints.delete().where(
            mail_checkpoints.c.folder.in_([folder + _TOP, folder + _BELOW])
        )
    )


async def save_first_sync(
    conn: AsyncConnection, folder: str, uidvalidity: int, top: int, below: int
) -> None:
    """Record a first sync's progress: it ends at UID ``top``; UIDs from ``below`` are stored."""
    now = utcnow()
    insert = upsert(conn, mail_checkpoints)
    await conn.execute(
        insert.on_conflict_do_update(
            index_elements=["folder"],
            set_={
                "uidvalidity": insert.excluded.uidvalidity,
                "last_uid": insert.excluded.last_uid,
                "updated_at": now,
            },
        ),
        [
            {
                "folder": folder + _TOP,
                "uidvalidity": uidvalidity,
                "last_uid": top,
                "updated_at": now,
            },
            {
                "folder": folder + _BELOW,
                "uidvalidity": uidvalidity,
                "last_uid": below,
                "updated_at": now,
            },
        ],
    )


async def load_first_sync(conn: AsyncConnection, folder: str) -> tuple[int, int, int] | None:
    """(uidvalidity, top, below) of a first sync of ``folder`` that was cut off, if any."""
    rows = {
        row.folder: row
        for row in await conn.execute(
            sa.select(mail_checkpoints).where(
                mail_checkpoints.c.folder.in_([folder + _TOP, folder + _BELOW])
            )
        )
    }
    top, below = rows.get(folder + _TOP), rows.get(folder + _BELOW)
    if top is None or below is None or top.uidvalidity != below.uidvalidity:
        return None
    return int(top.uidvalidity), int(top.last_uid), int(below.last_uid)


async def known_threads(conn: AsyncConnection, keys: Sequence[str]) -> dict[str, str]:
    """The thread keys of those ``keys`` (Message-IDs or subject keys) that are known."""
    found: dict[str, str] = {}
    for part in chunks(list(keys)):
        rows = await conn.execute(
            sa.select(thread_keys.c.key, thread_keys.c.thread_key).where(
                thread_keys.c.key.in_(part)
            )
        )
        found.update({k: t for k, t in rows})
    return found


async def remember_thread(
    conn: AsyncConnection, thread_key: str, new_ids: Sequence[str], subject_key: str | None
) -> None:
    """Store a threading decision: new ids if absent, the subject key replaced."""
    now = utcnow()
    if new_ids:
        await conn.execute(
            insert_ignoring(conn, thread_keys, ["key"]),
            [{"key": i, "thread_key": thread_key, "updated_at": now} for i in new_ids],
        )
    if subject_key:
        result = await conn.execute(
            thread_keys.update()
            .where(thread_keys.c.key == subject_key)
            .values(thread_key=thread_key, updated_at=now)
        )
        if result.rowcount == 0:
            await conn.execute(
                insert_ignoring(conn, thread_keys, ["key"]).values(
                    key=subject_key, thread_key=thread_key, updated_at=now
                )
            )


async def remember_threads(
    conn: AsyncConnection, new_ids: Mapping[str, str], subjects: Mapping[str, str]
) -> None:
    """Store a batch of threading decisions in two statements.

    ``new_ids`` (id -> thread) are added only where absent; ``subjects`` (subject key ->
    thread) replace what is there, so a subject leads to its newest thread.
    """
    now = utcnow()
    if new_ids:
        await conn.execute(
            insert_ignoring(conn, thread_keys, ["key"]),
            [{"key": k, "thread_key": t, "updated_at": now} for k, t in new_ids.items()],
        )
    if subjects:
        insert = upsert(conn, thread_keys)
        await conn.execute(
            insert.on_conflict_do_update(
                index_elements=["key"],
                set_={"thread_key": insert.excluded.thread_key, "updated_at": now},
            ),
            [{"key": k, "thread_key": t, "updated_at": now} for k, t in subjects.items()],
        )


async def rename_thread(conn: AsyncConnection, old: str, new: str) -> None:
    """Two threads turned out to be one: everything of ``old`` moves to ``new``."""
    now = utcnow()
    await conn.execute(
        thread_keys.update()
        .where(thread_keys.c.thread_key == old)
        .values(thread_key=new, updated_at=now)
    )
    await conn.execute(
        events.update()
        .where(events.c.channel == "email", events.c.thread_key == old)
        .values(thread_key=new, updated_at=now)
    )


async def clear_bounces(conn: AsyncConnection, addresses: Collection[str]) -> None:
    """Addresses that wrote to us work again."""
    if addresses:
        await conn.execute(bounces.delete().where(bounces.c.address.in_(sorted(addresses))))


async def record_bounce(
    conn: AsyncConnection,
    address: str,
    *,
    hard: bool,
    status: str | None,
    event_id: str | None,
    at: datetime | None = None,
) -> None:
    """Remember a bounce; a soft one never downgrades a recorded hard one."""
    when = at or utcnow()
    row = (
        await conn.execute(sa.select(bounces.c.hard).where(bounces.c.address == address))
    ).one_or_none()
    values = {"hard": hard, "status": status, "event_id": event_id, "updated_at": when}
    if row is None:
        await conn.execute(bounces.insert().values(address=address, **values))
    elif hard or not row.hard:
        await conn.execute(bounces.update().where(bounces.c.address == address).values(**values))


async def clear_bounce(conn: AsyncConnection, address: str) -> None:
    """Mail from the address arrived: it works again."""
    await conn.execute(bounces.delete().where(bounces.c.address == address))


async def undeliverable(conn: AsyncConnection, address: str) -> dict[str, Any] | None:
    """Why mail to ``address`` must not be sent (a hard bounce), or None."""
    row = (
        (await conn.execute(sa.select(bounces).where(bounces.c.address == address)))
        .mappings()
        .one_or_none()
    )
    if row is None or not row["hard"]:
        return None
    return {"address": address, "status": row["status"], "since": iso(row["updated_at"])}
