"""A call's state in the hub: what each Twilio callback changes, and the screen pop.

Each callback is one write transaction: find the call's event (by the signed ``event``
query parameter of the URLs we gave Twilio, else by CallSid or ParentCallSid), lock it,
store what the callback says of its leg (``timeline.calls``, forward-only), then derive
the event's status and data from every leg known (``channels.twilio.voice.call_state``).
A fact never moves backwards, so callbacks arriving in any order settle the same way.
The derivation needs the stored state of the other legs, which is why these updates do
not go through the group writer (which only moves one event's status forward).

The screen pop (CONTRACT.md) is the call, its customer and the first page of their
timeline; ``state`` is the contract's ``ringing``/``in-progress``/``completed`` and
``status`` Twilio's exact word.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import urlencode

from sqlalchemy.ext.asyncio import AsyncConnection

from channels.twilio import twiml, voice
from channels.twilio.signature import public_url_for
from config import Settings
from timeline import calls, sqlite_direct, store
from timeline import customers as customer_ops
from timeline.db import Database
from timeline.events import Channel, Direction, Event, utcnow
from timeline.files import FileStore
from timeline.ingest import Outcome, attach_external_id, ingest_batch
from timeline.publish import (
    Audience,
    Prepared,
    Publisher,
    audiences,
    audiences_of,
    audiences_statement,
)
from timeline.records import Customer, StoredEvent, iso

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: Events in the screen pop's timeline (the API's default first page).
POP_PAGE = 50

WEBHOOK_STATUS = "/webhooks/twilio/voice/status"
WEBHOOK_RECORDING = "/webhooks/twilio/voice/recording"
WEBHOOK_DIAL = "/webhooks/twilio/voice/dial"
WEBHOOK_BRIDGE = "/webhooks/twilio/voice/bridge"
WEBHOOK_AGENT = "/webhooks/twilio/voice/agent"
WEBHOOK_DEQUEUED = "/webhooks/twilio/voice/dequeued"


_ROUTES: dict[str, Literal["clients", "numbers", "queue"]] = {
    "clients": "clients",
    "numbers": "numbers",
    "queue": "queue",
}


def webhook_url(settings: Settings, path: str, **query: str) -> str:
    """``HUB_PUBLIC_URL`` + path + query: a callback URL for Twilio (signed as given)."""
    return public_url_for(settings.public_url, path, urlencode(query))


def routing(settings: Settings) -> twiml.Routing:
    """The inbound routing the ``TWILIO_VOICE_*`` settings ask for."""
    return twiml.Routing(
        route=_ROUTES[settings.twilio_voice_route],
        clients=settings.twilio_voice_clients,
        numbers=settings.twilio_voice_agent_numbers,
        queue=settings.twilio_voice_queue,
        greeting=settings.twilio_voice_greeting,
        record=settings.twilio_voice_record,
        timeout=settings.twilio_voice_timeout,
        voicemail_prompt=settings.twilio_voicemail_prompt,
    )


def contract_state(status: str | None) -> str:
    """The screen pop's ``state``: ``ringing`` before an answer, then ``in-progress``,
    then ``completed`` for every way a call ends."""
    if status in voice.TERMINAL:
        return "completed"
    if status == "in-progress":
        return "in-progress"
    return "ringing"


def call_json(event: StoredEvent, customer: Customer | None) -> dict[str, Any]:
    """A call for agents: the screen pop without its timeline (``GET /calls/active``)."""
    return {
        "call_id": event.id,
        "external_id": event.external_id,
        "state": contract_state(event.status),
        "status": event.status,
        "direction": event.direction,
        "from": event.sender,
        "to": event.recipient,
        "started_at": iso(event.occurred_at),
        "answered_by": event.data.get("answered_by"),
        "missed": bool(event.data.get("missed", False)),
        "customer": customer.to_json() if customer is not None else None,
    }


async def screen_pop(conn: AsyncConnection, event: StoredEvent) -> dict[str, Any]:
    """The ``event: call`` message: the call, its customer and their first page."""
    customer = await customer_ops.get(conn, event.customer_id)
    page, _ = await store.page(conn, event.customer_id, limit=POP_PAGE)
    return {**call_json(event, customer), "timeline": [e.to_json() for e in page]}


def anonymous_pop(call_sid: str, caller: str, called: str) -> dict[str, Any]:
    """The screen pop of a call from a number that is nobody's (withheld, ``anonymous``)."""
    return {
        "call_id": None,
        "external_id": call_sid,
        "state": "ringing",
        "status": "ringing",
        "direction": Direction.INBOUND.value,
        "from": caller,
        "to": called,
        "started_at": iso(utcnow()),
        "answered_by": None,
        "missed": False,
        "customer": None,
        "timeline": [],
    }


async def _pop_parts(
    conn: AsyncConnection, events: list[StoredEvent]
) -> list[tuple[dict[str, Any], str]]:
    """Each call's pop without its timeline, and its timeline as JSON text; the
    customers and first pages of all of them read together."""
    people, pages, _ = await _pop_reads(conn, [e.customer_id for e in events], audience=False)
    return [(call_json(e, people.get(e.customer_id)), pages[e.customer_id]) for e in events]


async def _pop_reads(
    conn: AsyncConnection, customer_ids: list[str], *, audience: bool
) -> tuple[dict[str, Customer], dict[str, str], dict[str, Audience]]:
    """The customers, first pages (JSON text) and, if asked, audiences of screen pops.

    On SQLite all of them in one trip to aiosqlite's thread (``sqlite_direct.fetch_each``):
    twenty calls' pops are ~26 statements, and a trip each cost a wake-up of that thread
    and of the event loop, and the GIL handed over both ways (in the bench's server, the
    pop read was ~half the time from a burst's last request to its pops).
    """
    wanted = list(dict.fromkeys(customer_ids))
    statements = calls.customers_statements(wanted)
    first_page = len(statements)
    statements += calls.first_page_statements(wanted, limit=POP_PAGE)
    if audience:
        statements.append(audiences_statement(wanted))
    rows = await sqlite_direct.fetch_each(conn, statements) if wanted else None
    if rows is None:  # not SQLite through aiosqlite, or nobody
        return (
            await calls.customers_many(conn, wanted),
            await calls.first_pages_text(conn, wanted, limit=POP_PAGE),
            await audiences(conn, wanted) if audience else {},
        )
    people = calls.customers_of_rows(wanted, rows[:first_page])
    pages = {
        cid: calls.page_text(found)
        for cid, found in zip(wanted, rows[first_page : first_page + len(wanted)], strict=True)
    }
    return people, pages, audiences_of(wanted, rows[-1]) if audience else {}


async def screen_pops(conn: AsyncConnection, events: list[StoredEvent]) -> list[dict[str, Any]]:
    """:func:`screen_pop` of many calls, their customers read together."""
    return [{**head, "timeline": json.loads(page)} for head, page in await _pop_parts(conn, events)]


async def prepared_pops(conn: AsyncConnection, events: list[StoredEvent]) -> list[Prepared]:
    """:func:`screen_pops` as their JSON, written once for every stream: the timeline's
    text (written by SQLite) goes in as it is, without being parsed and written again."""
    return [pop for pop, _ in await pops_and_audiences(conn, events)]


async def pops_and_audiences(
    conn: AsyncConnection, events: list[StoredEvent]
) -> list[tuple[Prepared, Audience]]:
    """:func:`prepared_pops` of these calls, each with its customer's audience, read
    together."""
    if not events:
        return []
    people, pages, found = await _pop_reads(conn, [e.customer_id for e in events], audience=True)
    pops = []
    for event in events:
        customer = people.get(event.customer_id)
        head = json.dumps(call_json(event, customer), separators=(",", ":"))
        text = head[:-1] + ',"timeline":' + pages[event.customer_id] + "}"
        pop = Prepared(text, customer.id if customer is not None else None)
        pops.append((pop, found[event.customer_id]))
    return pops


async def read_pop(db: Database, event: StoredEvent) -> dict[str, Any]:
    """:func:`screen_pop` in a read transaction of its own."""
    async with db.read() as conn:
        return await screen_pop(conn, event)


async def read_pop_audience(db: Database, event: StoredEvent) -> tuple[dict[str, Any], Audience]:
    """:func:`screen_pop` and who may see it (``timeline.publish``), in one read."""
    async with db.read() as conn:
        pop = await screen_pop(conn, event)
        found = await audiences(conn, [event.customer_id])
    return pop, found[event.customer_id]


#: Passes of the event loop a run lets by for more items, while they keep coming.
GATHER_PASSES = 8

#: ``take()``: the items of a run (awaited once, when its work is ready for them).
Take = Callable[[], Awaitable[list[T]]]


class Coalescer(Generic[T, R]):
    """Concurrent requests share one run of ``work`` over everything waiting.

    Twenty calls arriving at once would otherwise queue twenty times for SQLite's one
    writer. Whoever holds the lock starts a run of ``work(take)``, which awaits
    ``take()`` when it is ready for its items (on SQLite once it holds the write lock,
    which takes a while when requests are being read): ``take`` lets the event loop
    pass while more requests keep arriving (up to :data:`GATHER_PASSES` passes), then
    takes every item waiting. ``work`` answers one result per item taken, in order; the
    others find theirs done when their turn comes. Group commit, without a background
    task or a timer; a lone request runs at once. A run is a task of its own: a request
    cancelled while it leads one (a client gone) leaves the run to finish for the others.
    """

    def __init__(self, work: Callable[[Take[T]], Awaitable[list[R]]]) -> None:
        self._work = work
        self._lock = asyncio.Lock()
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self.runs = 0

    async def __call__(self, item: T) -> R:
        """``work`` applied to ``item`` (with whatever else is waiting)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        async with self._lock:
            if not future.done():
                await asyncio.shield(asyncio.ensure_future(self._run()))
        return await future

    async def _run(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []

        async def take() -> list[T]:
            count = 0
            for _ in range(GATHER_PASSES):
                if len(self._waiting) == count:
                    break
                count = len(self._waiting)
                await asyncio.sleep(0)
            batch[:], self._waiting = self._waiting, []
            return [i for i, _ in batch]

        try:
            results = await self._work(take)
        except Exception as exc:
            if not batch:  # failed before taking: the waiting items fail with it
                batch[:], self._waiting = self._waiting, []
            for _, waiting in batch:
                if not waiting.done():
                    waiting.set_exception(exc)
        else:
            self.runs += 1
            for (_, waiting), result in zip(batch, results, strict=True):
                if not waiting.done():
                    waiting.set_result(result)


@dataclasses.dataclass(frozen=True, slots=True)
class Arrival:
    """An incoming call as stored: its ingest outcome, and unless its caller is nobody
    (``rejected``), its event and its screen pop with who may see it."""

    outcome: Outcome
    event: StoredEvent | None = None
    pop: Prepared | None = None
    audience: Audience | None = None


class Incoming:
    """Incoming calls arriving together, stored and popped together.

    One write transaction stores the calls' events (``timeline.ingest.ingest_batch``, as
    the group writer would) and their rows (``timeline.calls.open_many``), and on SQLite
    reads their screen pops and audiences too: SQLite has one writer, so nothing can
    commit between that read and this commit, and what it reads holds after it. On
    PostgreSQL the pops are read after the commit, in a read transaction. Then the
    changed events and the pops are published, each with its audience (so no stream
    reads anything for them), and only then are the requests answered.

    Each call pays its share of one or two transactions, not three in a row (the group
    writer's, a pop read, the rows' write) plus a stream's read of the audiences. A batch
    that fails is retried one call at a time, so one bad call cannot fail the others.
    """

    def __init__(
        self, db: Database, publisher: Publisher, *, region: str, files: FileStore | None
    ) -> None:
        self.db = db
        self.publisher = publisher
        self.region = region
        self.files = files
        self._coalesce: Coalescer[Event, Arrival | Exception] = Coalescer(self._batch)

    async def __call__(self, event: Event) -> Arrival:
        """Store this incoming call (and whatever else is waiting), publish its pop."""
        arrival = await self._coalesce(event)
        if isinstance(arrival, Exception):
            raise arrival
        return arrival

    async def _batch(self, take: Take[Event]) -> list[Arrival | Exception]:
        events: list[Event] = []

        async def taken() -> list[Event]:
            events.extend(await take())
            return events

        try:
            return list(await self._store(taken))
        except Exception:
            if len(events) <= 1:
                raise
            log.exception("%d incoming calls failed together; storing one by one", len(events))
        alone: list[Arrival | Exception] = []
        for event in events:

            async def one(event: Event = event) -> list[Event]:
                return [event]

            try:
                alone += await self._store(one)
            except Exception as exc:  # this call alone is bad
                alone.append(exc)
        return alone

    async def _store(self, take: Take[Event]) -> list[Arrival]:
        sqlite = self.db.is_sqlite
        async with self.db.write() as conn:
            # Taken once the transaction holds SQLite's write lock: the requests read
            # meanwhile join this batch instead of waiting for it.
            events = await take()
            result = await ingest_batch(conn, events, region=self.region, files=self.files)
            stored: list[StoredEvent | None] = []
            for event, outcome in zip(events, result.outcomes, strict=True):
                found = outcome.event
                if found is None and outcome.kind != "rejected":
                    # Twilio asked again: the call is stored already.
                    assert event.external_id is not None
                    found = await store.find_event(conn, Channel.VOICE.value, event.external_id)
                    assert found is not None
                stored.append(found)
            held = [e for e in stored if e is not None]
            await calls.open_many(conn, [ringing(e) for e in held])
            if sqlite:
                pops = await pops_and_audiences(conn, held)
        if not sqlite:
            async with self.db.read() as conn:
                pops = await pops_and_audiences(conn, held)
        popped = dict(zip((e.id for e in held), pops, strict=True))
        for changed in result.changed:
            self.publisher.publish("timeline", changed, popped[changed.id][1])
        for call in held:
            self.publisher.publish("call", *popped[call.id])
        return [
            Arrival(outcome) if call is None else Arrival(outcome, call, *popped[call.id])
            for outcome, call in zip(result.outcomes, stored, strict=True)
        ]


def ringing(event: StoredEvent) -> dict[str, Any]:
    """The ``calls`` row of a new incoming call (``timeline.calls.open_many``)."""
    return {
        "call_sid": event.external_id,
        "event_id": event.id,
        "direction": Direction.INBOUND.value,
        "state": "ringing",
        "caller": event.sender,
        "callee": event.recipient,
        "at": event.occurred_at,
    }


@dataclasses.dataclass(frozen=True, slots=True)
class Applied:
    """What a callback did to its call: the event as it is now, and whether it changed."""

    event: StoredEvent
    changed: bool


async def find_call(
    conn: AsyncConnection, *, call_sid: str, parent_sid: str | None, hint: str | None
) -> StoredEvent | None:
    """The event of the call a callback is about, locked; None if we hold no such call.

    ``hint`` is the ``event`` query parameter of a URL we gave Twilio: signed with the
    rest of the URL, so it is ours. Otherwise the parent's CallSid, the CallSid, or the
    stored leg with that CallSid lead to it.
    """
    event_id: str | None = None
    if hint:
        event_id = hint
    else:
        for sid in (parent_sid, call_sid):
            if sid is None:
                continue
            found = await store.find_event(conn, Channel.VOICE.value, sid)
            if found is not None:
                event_id = found.id
                break
        else:
            row = await calls.get(conn, call_sid)
            event_id = row.event_id if row is not None else None
    if event_id is None:
        return None
    event = await calls.lock_event(conn, event_id)
    if event is None or event.channel != Channel.VOICE.value:
        return None
    return event


async def _parent(conn: AsyncConnection, event: StoredEvent) -> str | None:
    """The parent CallSid of the event's call, its row made if missing."""
    if event.external_id is None:
        return None
    inbound = event.direction == Direction.INBOUND.value
    await calls.open_call(
        conn,
        call_sid=event.external_id,
        event_id=event.id,
        direction=event.direction,
        state="ringing" if inbound else "queued",
        caller=event.sender,
        callee=event.recipient,
        at=event.occurred_at,
    )
    return event.external_id


async def settle(
    conn: AsyncConnection, event: StoredEvent, extra: dict[str, Any] | None = None
) -> Applied:
    """Derive the call's status and data from all its legs; write the event if changed."""
    rows = await calls.rows_of(conn, event.id)
    parent = next((r for r in rows if r.call_sid == event.external_id), None)
    legs = [voice.Leg(r.state) for r in rows if r.parent_sid is not None]
    answered = parent is not None and parent.answered_at is not None
    status = voice.call_state(
        event.direction, parent.state if parent else None, legs, answered=answered
    )
    if event.status == "failed" and not rows:
        status = "failed"  # the provider refused to place it: nothing will follow
    data = dict(event.data)
    data.update(extra or {})
    data["answered"] = answered
    if event.direction == Direction.INBOUND.value and parent is not None and parent.answered_by:
        data["answered_by"] = parent.answered_by
    if event.direction == Direction.INBOUND.value and status in voice.TERMINAL:
        data["missed"] = voice.is_missed(event.direction, status, answered=answered)
    if status in voice.TERMINAL:
        await calls.close(conn, event.id)
    if status == event.status and data == event.data:
        return Applied(event, changed=False)
    fresh = await calls.update_event(conn, event.id, status=status, data=data)
    return Applied(fresh, changed=True)


async def apply_status(
    conn: AsyncConnection, update: voice.CallUpdate, *, hint: str | None
) -> Applied | None:
    """A call or leg status callback; None if the call is not ours."""
    event = await find_call(conn, call_sid=update.call_sid, parent_sid=update.parent_sid, hint=hint)
    if event is None:
        return None
    if hint and update.parent_sid is None and event.external_id is None:
        # The callback may beat the click-to-call's own record of the CallSid.
        await attach_external_id(conn, event.id, Channel.VOICE, update.call_sid)
        event = dataclasses.replace(event, external_id=update.call_sid)
    parent_sid = await _parent(conn, event)
    extra: dict[str, Any] = {}
    if update.parent_sid is not None:
        if parent_sid is not None and update.parent_sid != parent_sid:
            log.warning("leg %s names parent %s, not its call's", update.call_sid, parent_sid)
            return None
        leg = await calls.record_state(
            conn,
            update.call_sid,
            event_id=event.id,
            state=update.status,
            direction=update.direction or "outbound-dial",
            parent_sid=update.parent_sid,
            caller=update.from_,
            callee=update.to,
        )
        if update.status in voice.ANSWERED and parent_sid is not None:
            await calls.mark_answered(conn, parent_sid, by=leg.callee)
        if update.status == "completed" and update.duration is not None:
            key = "talk_seconds" if event.direction == Direction.INBOUND.value else "duration"
            extra[key] = update.duration
    elif update.call_sid == parent_sid:
        await calls.record_state(
            conn,
            update.call_sid,
            event_id=event.id,
            state=update.status,
            direction=event.direction,
        )
        if update.duration is not None and event.direction == Direction.INBOUND.value:
            extra["duration"] = update.duration
    else:
        log.warning("callback of call %s for another call's event ignored", update.call_sid)
        return None
    return await settle(conn, event, extra)


async def apply_dial_result(
    conn: AsyncConnection,
    result: voice.DialResult,
    *,
    hint: str | None,
    hanging_up: bool,
    queue: str = "support",
) -> Applied | None:
    """The action request after ``<Dial>``/``<Enqueue>``/``<Record>``.

    The dialled leg's outcome is stored as its own callback would be (so a lost leg
    callback is repaired), a bridged queue call counts as answered, and when our answer is
    ``<Hangup>`` (``hanging_up``) the call ends now. ``queue`` names the queue a bridged
    caller waited in (Twilio's request does not).
    """
    event = await find_call(conn, call_sid=result.call_sid, parent_sid=None, hint=hint)
    if event is None:
        return None
    parent_sid = await _parent(conn, event)
    if parent_sid is None:
        return None
    extra: dict[str, Any] = {}
    if result.dial_call_sid and result.dial_status:
        leg = await calls.record_state(
            conn,
            result.dial_call_sid,
            event_id=event.id,
            state=result.dial_status,
            direction="outbound-dial",
            parent_sid=parent_sid,
        )
        if result.dial_status in voice.ANSWERED:
            await calls.mark_answered(conn, parent_sid, by=leg.callee)
            if result.dial_duration is not None:
                key = "talk_seconds" if event.direction == Direction.INBOUND.value else "duration"
                extra[key] = result.dial_duration
    if result.queue_result in ("bridged", "bridging-in-process"):
        await calls.mark_answered(conn, parent_sid, by=f"queue:{queue}")
    if result.queue_seconds is not None:
        extra["queue_seconds"] = result.queue_seconds
    if hanging_up:
        await calls.record_state(
            conn, parent_sid, event_id=event.id, state="completed", direction=event.direction
        )
    return await settle(conn, event, extra)


async def apply_dequeued(
    conn: AsyncConnection, dequeued: voice.Dequeued, *, agent: str
) -> Applied | None:
    """An agent (``client:alice``) took the queued caller: the call is answered by them.

    The first answer wins (``timeline.calls.mark_answered``), so the ``<Enqueue>`` action
    that follows (``queue:<name>``) does not replace the agent.
    """
    event = await find_call(conn, call_sid=dequeued.call_sid, parent_sid=None, hint=None)
    if event is None:
        return None
    parent_sid = await _parent(conn, event)
    if parent_sid is None:
        return None
    await calls.mark_answered(conn, parent_sid, by=agent)
    extra: dict[str, Any] = {}
    if dequeued.queue_seconds is not None:
        extra["queue_seconds"] = dequeued.queue_seconds
    return await settle(conn, event, extra)


async def apply_recording(
    conn: AsyncConnection,
    update: voice.RecordingUpdate | voice.TranscriptionUpdate,
    *,
    hint: str | None,
) -> Applied | None:
    """Attach a recording or its transcription to the call's event.

    The event keeps the recording's sid, status, duration and source, and the hub's own
    URL that plays it; the provider's URL is never stored. A voicemail is a call whose
    recording came from ``<Record>``; its transcription becomes the event's text.
    """
    event = await find_call(conn, call_sid=update.call_sid, parent_sid=None, hint=hint)
    if event is None:
        return None
    data = dict(event.data)
    text: str | None = None
    if isinstance(update, voice.RecordingUpdate):
        current = data.get("recording")
        if (
            isinstance(current, dict)
            and current.get("status") == "completed"
            and update.status != "completed"
        ):
            return Applied(event, changed=False)
        summary = update.summary()
        if update.status == "completed":
            summary["url"] = f"/api/v1/calls/{event.id}/recording"
        data["recording"] = summary
        if update.source == "RecordVerb":
            data["voicemail"] = True
    else:
        data["transcript"] = {"sid": update.transcription_sid, "status": update.status}
        if update.text is not None:
            text = update.text
    if data == event.data and (text is None or text == event.text):
        return Applied(event, changed=False)
    if text is None:
        fresh = await calls.update_event(conn, event.id, data=data)
    else:
        fresh = await calls.update_event(conn, event.id, data=data, text=text)
    return Applied(fresh, changed=True)
