"""Inbound part of the SMS benchmark: signed webhooks replayed by wrk, then verified.

See ``bench/sms_bench.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import secrets
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import sqlalchemy as sa

from bench.sms_common import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    INBOUND_PATH,
    INBOUND_TARGET,
    KNOWN_AREAS,
    LUA_REPLAY,
    NEW_AREAS,
    OUR_NUMBER,
    PUBLIC_URL,
    TEXTS,
    WRK_CONNECTIONS,
    WRK_THREADS,
    Plan,
    Server,
    Verdict,
    analyze,
    create_customers,
    phones,
    profiling,
    rate,
    say,
)
from channels.twilio.forms import encode_form
from channels.twilio.sandbox import shapes
from channels.twilio.signature import SIGNATURE_HEADER, sign
from timeline.db import Database
from timeline.schema import customers, events


@dataclasses.dataclass
class Inbound:
    """The generated webhooks: sid, sender, signature and body of each, in order."""

    sids: list[str]
    senders: list[str]
    lines: list[str]
    known: set[str]


def generate_inbound(plan: Plan, known: Sequence[str], new: Sequence[str], tag: str) -> Inbound:
    """Signed inbound-SMS forms: even ones from known customers, odd ones from new numbers.

    The field set and order are the sandbox's (``shapes.inbound_form``); only the values
    change from one request to the next (all numbers are in the US, as the template's).
    """
    rng = random.Random(1604)
    template = shapes.inbound_form(
        ACCOUNT_SID,
        shapes.message_resource(
            ACCOUNT_SID, "SM" + "0" * 32, known[0], OUR_NUMBER, "x", 0, "inbound"
        ),
        (),
    )
    url = PUBLIC_URL + INBOUND_PATH
    sids: list[str] = []
    senders: list[str] = []
    lines: list[str] = []
    for i in range(plan.requests):
        sid = f"SM{tag}{i:024x}"
        sender = known[rng.randrange(len(known))] if i % 2 == 0 else new[i // 2]
        body = TEXTS[rng.randrange(len(TEXTS))]
        values = {
            "SmsMessageSid": sid,
            "SmsSid": sid,
            "MessageSid": sid,
            "From": sender,
            "To": OUR_NUMBER,
            "Body": body,
            "NumSegments": str(shapes.segments(body)),
        }
        form = [(k, values.get(k, v)) for k, v in template]
        sids.append(sid)
        senders.append(sender)
        lines.append(f"{sign(AUTH_TOKEN, url, form)}\t{encode_form(form).decode()}")
    return Inbound(sids, senders, lines, set(known))


@dataclasses.dataclass
class WrkRun:
    """What one wrk run reported."""

    seconds: float
    requests: int
    statuses: dict[int, int]
    issued: list[int]  # per thread
    wraps: list[int]
    responses: list[int]
    errors: dict[str, int]
    rps_line: str

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def ok_rate(self) -> float:
        return self.ok / self.seconds

    def status_text(self) -> str:
        return ", ".join(f"{s}: {n:,}" for s, n in sorted(self.statuses.items()))

    def error_text(self) -> str:
        bad = {k: v for k, v in self.errors.items() if v}
        return ", ".join(f"{k} {v}" for k, v in bad.items()) or "none"


def run_wrk(url: str, data: Path, first: int, count: int, seconds: int) -> WrkRun:
    """wrk -t2 -c32 replaying lines first..first+count-1 of ``data`` for ``seconds``."""
    cmd = [
        "wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--timeout", "30s",
        "-s", str(LUA_REPLAY), url + INBOUND_PATH,
        "--", str(data), INBOUND_PATH, str(first), str(count), str(WRK_THREADS),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 120)
    issued = [0] * WRK_THREADS
    wraps = [0] * WRK_THREADS
    responses = [0] * WRK_THREADS
    statuses: dict[int, int] = {}
    errors: dict[str, int] = {}
    seconds_run = float(seconds)
    total = 0
    rps_line = ""
    for line in out.stdout.splitlines():
        if line.startswith("Requests/sec"):
            rps_line = line.strip()
        if not line.startswith("SMSBENCH "):
            continue
        fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
        if "total" in line.split():
            seconds_run = int(fields.pop("duration_us")) / 1e6
            total = int(fields.pop("requests"))
            errors = {k: int(v) for k, v in fields.items()}
            continue
        t = int(fields.pop("thread"))
        issued[t] = int(fields.pop("issued"))
        wraps[t] = int(fields.pop("wraps"))
        responses[t] = int(fields.pop("responses"))
        for key, value in fields.items():
            status = int(key.removeprefix("status_"))
            statuses[status] = statuses.get(status, 0) + int(value)
    if not rps_line:
        raise RuntimeError(f"wrk said: {out.stdout}\n{out.stderr}")
    return WrkRun(seconds_run, total, statuses, issued, wraps, responses, errors, rps_line)


def issued_lines(run: WrkRun, first: int, count: int) -> set[int]:
    """Line numbers of the distinct requests a run issued (thread t: first+t, +T, ...)."""
    lines: set[int] = set()
    for t, n in enumerate(run.issued):
        share = range(first + t, first + count, WRK_THREADS)
        lines.update(share[: min(n, len(share))])
    return lines


async def stored_sids(db: Database, tag: str, only: Sequence[str] = ()) -> tuple[int, set[str]]:
    """Rows and distinct MessageSids of this run's inbound events (or of ``only``)."""
    query = sa.select(events.c.external_id).where(
        events.c.channel == "sms", events.c.external_id.like(f"SM{tag}%")
    )
    if only:
        query = query.where(events.c.external_id.in_(list(only)))
    async with db.read() as conn:
        rows = list((await conn.execute(query)).scalars())
    return len(rows), set(rows)


async def replay(url: str, inbound: Inbound, lines: Sequence[int]) -> dict[int, int]:
    """Send these already accepted webhooks again (16 at a time); answers by status."""
    statuses: dict[int, int] = {}
    gate = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one(i: int) -> None:
            signature, body = inbound.lines[i].split("\t", 1)
            headers = {
                SIGNATURE_HEADER: signature,
                "Content-Type": "application/x-www-form-urlencoded",
            }
            async with gate:
                response = await client.post(INBOUND_PATH, content=body, headers=headers)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        await asyncio.gather(*(one(i) for i in lines))
    return statuses


@dataclasses.dataclass
class Measured:
    """One timed wrk run and what the machine did meanwhile."""

    run: WrkRun
    server_cpu: float  # CPU seconds of the server process during the run
    loop_cpu: float  # of which its main thread (the event loop)
    load: float  # 1-minute load average when it started

    @property
    def cpu_share(self) -> float:
        return self.server_cpu / self.run.seconds

    @property
    def cpu_per_request(self) -> float:
        return self.server_cpu / max(self.run.ok, 1)

    def line(self, name: str) -> str:
        return (
            f"  {name}: {rate(self.run.ok_rate)} req/s 2xx in {self.run.seconds:.1f} s "
            f"({self.run.status_text()}; socket errors: {self.run.error_text()}; server CPU "
            f"{self.cpu_share:.0%} of a core, {self.cpu_per_request * 1e6:.0f} us/request, "
            f"of which event-loop thread {self.loop_cpu / max(self.run.ok, 1) * 1e6:.0f} us; "
            f"load average {self.load:.1f}; wrk: {self.run.rps_line})"
        )


def measured(server: Server, data: Path, lines: tuple[int, int], seconds: int) -> Measured:
    load = os.getloadavg()[0]
    cpu0, loop0 = server.cpu(), server.loop_cpu()
    run = run_wrk(server.url, data, *lines, seconds)
    return Measured(run, server.cpu() - cpu0, server.loop_cpu() - loop0, load)


async def inbound_part(
    plan: Plan, db_url: str, db: Database, workdir: Path, profile: Path | None
) -> list[Verdict]:
    say("Inbound webhooks")
    tag = secrets.token_hex(4)
    known = phones(KNOWN_AREAS, plan.known)
    new = phones(NEW_AREAS, plan.requests // 2 + 1)
    started = time.perf_counter()
    await create_customers(db, known)
    await analyze(db)
    say(
        f"  pre-created {len(known):,} known customers, then ANALYZE "
        f"({time.perf_counter() - started:.1f} s)"
    )
    started = time.perf_counter()
    inbound = generate_inbound(plan, known, new, tag)
    data = workdir / "inbound.txt"
    data.write_text("\n".join(inbound.lines) + "\n")
    say(
        f"  generated {plan.requests:,} distinct signed webhooks, half from known customers "
        f"({data.stat().st_size / 1e6:.0f} MB, {time.perf_counter() - started:.1f} s)"
    )
    async with db.read() as conn:
        customers_before = (
            await conn.execute(sa.select(sa.func.count()).select_from(customers))
        ).scalar_one()

    warm = (0, plan.warm_requests)
    main = (plan.warm_requests, plan.requests - plan.warm_requests)
    hub_config = {
        "settings": {
            "database_url": db_url,
            "data_dir": str(workdir / "files"),
            "public_url": PUBLIC_URL,
            "twilio_account_sid": ACCOUNT_SID,
            "twilio_auth_token": AUTH_TOKEN,
            "twilio_numbers": [OUR_NUMBER],
            "log_level": "WARNING",
        }
    }
    # The limit is measured before and after the hub (the machine may be shared).
    empty = Server("empty", workdir)
    hub: Server | None = None
    try:
        empty.wait_ready()
        run_wrk(empty.url, data, *warm, plan.warmup)
        before = measured(empty, data, main, plan.duration)
        say(before.line("empty endpoint, before"))
        hub = Server("hub", workdir, hub_config)
        hub.wait_ready()
        warm_run = run_wrk(hub.url, data, *warm, plan.warmup)
        await analyze(db)  # the events table is no longer empty
        say(f"  hub warm-up: {warm_run.status_text()}, then ANALYZE")
        with profiling(hub.proc.pid, profile and profile / "hub-inbound.txt", plan.duration):
            got = measured(hub, data, main, plan.duration)
        say(got.line("hub POST /webhooks/twilio/sms"))
        after = measured(empty, data, main, plan.duration)
        say(after.line("empty endpoint, after"))
        run = got.run
        # Accepted webhooks sent again: all stored already, answered 200, nothing added.
        share0 = range(main[0], main[0] + main[1], WRK_THREADS)
        sample = list(share0[: min(plan.replays, max(run.issued[0] - WRK_CONNECTIONS, 0))])
        sample_sids = [inbound.sids[i] for i in sample]
        present, _ = await stored_sids(db, tag, sample_sids)
        again = await replay(hub.url, inbound, sample)
        present_after, _ = await stored_sids(db, tag, sample_sids)
    finally:
        empty.stop()
        if hub is not None:
            hub.stop()  # graceful: in-flight requests finish, the writer flushes
    issued = issued_lines(warm_run, *warm) | issued_lines(run, *main)
    count, sids = await stored_sids(db, tag)
    issued_sids = {inbound.sids[i] for i in issued}
    new_senders = {inbound.senders[i] for i in issued} - inbound.known
    async with db.read() as conn:
        customers_after = (
            await conn.execute(sa.select(sa.func.count()).select_from(customers))
        ).scalar_one()
    accepted = warm_run.ok + run.ok
    answered = sum(warm_run.responses) + sum(run.responses)
    repeats = sum(warm_run.wraps) + sum(run.wraps)
    sent = sum(warm_run.issued) + sum(run.issued)
    unanswered = sent - answered
    replay_ok = present == present_after == len(sample) and again == {200: len(sample)}
    exact = (
        count == len(sids) == len(issued_sids)
        and sids == issued_sids
        and accepted <= count
        and answered - accepted == 0
        and replay_ok
        and customers_after - customers_before == len(new_senders)
    )
    say(
        f"  requests issued by wrk: {sent:,} ({len(issued_sids):,} distinct, {repeats} "
        f"wrap-arounds), answered 2xx: {accepted:,}, other answers: {answered - accepted:,}, "
        f"unanswered when wrk stopped: {unanswered:,}"
    )
    say(
        f"  stored events of these MessageSids: {count:,} rows, {len(sids):,} distinct, "
        f"the same set as issued: {sids == issued_sids}"
    )
    say(
        f"  {len(sample):,} accepted webhooks sent again: answers {again}; their rows "
        f"before/after: {present:,}/{present_after:,}"
    )
    say(
        f"  new customers: {customers_after - customers_before:,} for "
        f"{len(new_senders):,} distinct new senders"
    )
    limit = (before.run.ok_rate + after.run.ok_rate) / 2
    ratio = run.ok_rate / limit if limit else 0.0
    cpu_ratio = before.cpu_per_request / got.cpu_per_request
    say(
        f"  server CPU per request: empty {before.cpu_per_request * 1e6:.0f} us, hub "
        f"{got.cpu_per_request * 1e6:.0f} us ({cpu_ratio:.0%}: the ratio a dedicated core "
        "would allow)"
    )
    return [
        Verdict(
            "inbound SMS webhooks (hub)",
            f"{rate(run.ok_rate)} req/s",
            f"empty endpoint {rate(limit)} req/s (mean of before {rate(before.run.ok_rate)} "
            f"and after {rate(after.run.ok_rate)}), target >= {INBOUND_TARGET:.0%}",
            f"{ratio:.0%}",
            ratio >= INBOUND_TARGET,
        ),
        Verdict(
            "every accepted webhook stored exactly once",
            f"{count:,} rows for {len(sids):,} MessageSids",
            f"{accepted:,} answered 2xx + {unanswered:,} unanswered at stop = "
            f"{len(issued_sids):,} distinct issued; {len(sample)} repeats were no-ops",
            "exact" if exact else "MISMATCH",
            exact,
        ),
    ]
