"""Outbound part of the SMS benchmark: queue, then drain to the sandbox; references.

See ``bench/sms_bench.py``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import re
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.sms_common import (
    ACCOUNT_SID,
    ALL_STATUSES,
    AUTH_TOKEN,
    LUA_CREATE,
    NEW_AREAS,
    OUR_NUMBER,
    OUTBOUND_TARGET,
    SEND_CONCURRENCY,
    WRK_THREADS,
    Plan,
    Server,
    Verdict,
    analyze,
    phones,
    profiling,
    rate,
    say,
)
from bench.sms_inbound import WrkRun
from channels.twilio.client import TwilioClient
from channels.twilio.forms import encode_form
from config import Settings
from hub.services import Services
from hub.sms_outbound import queue_sms
from hub.sms_sender import SmsSender
from timeline.db import Database
from timeline.schema import events, identities, outbox

#: How long the info run with callbacks may take before it is given up.
CALLBACKS_TIMEOUT = 180.0


async def queue_messages(
    db: Database, settings: Settings, recipients: Sequence[str], count: int
) -> float:
    """``count`` messages through ``queue_sms``, 500 per transaction; seconds taken."""
    started = time.perf_counter()
    for start in range(0, count, 500):
        async with db.write() as conn:
            for i in range(start, min(start + 500, count)):
                await queue_sms(
                    conn,
                    settings,
                    customer_id=recipients[i % len(recipients)],
                    text=f"Reminder {i}: your appointment is tomorrow at 10:15. Reply C to "
                    "confirm.",
                )
    return time.perf_counter() - started


@dataclasses.dataclass(frozen=True)
class Loop:
    """A reference send loop: messages/s and the bench process's CPU s per message."""

    rate: float
    cpu: float


async def sdk_loop(settings: Settings, n: int, callback: str) -> Loop:
    """``TwilioClient.send_sms`` n times, 32 at a time, as the sender does it."""
    client = TwilioClient.from_settings(settings)
    numbers = phones(NEW_AREAS, n, skip=900_000)
    gate = asyncio.Semaphore(SEND_CONCURRENCY)

    async def one(to: str) -> None:
        async with gate:
            await client.send_sms(
                from_=OUR_NUMBER, to=to, body="Reference message", status_callback=callback
            )

    try:
        await client.send_sms(from_=OUR_NUMBER, to=numbers[0], body="warm-up")
        cpu0 = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(one(to) for to in numbers))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu0
    finally:
        await client.aclose()
    return Loop(n / elapsed, cpu / n)


@dataclasses.dataclass
class Phases:
    """Wall time of the sender's rounds, split by what the round was doing."""

    rounds: int = 0
    total: float = 0.0
    before: float = 0.0  # claim + consent reads, up to the first send
    sends: float = 0.0  # first send to last answer (chunks are recorded meanwhile)
    after: float = 0.0  # last answer to the end of the round: the last chunk's record
    record: float = 0.0  # all of _record's time, overlapped or not


async def drain(services: Services, phases: Phases) -> int:
    """``SmsSender.run_once`` until the outbox is empty; messages handled.

    Phases are measured from outside: the round's wall time, the span from its first
    send to its last answer, and ``_record``'s (wrapped on this instance only; it runs
    in chunks while later sends are still out, so it overlaps the sends).
    """
    assert services.twilio is not None
    sender = SmsSender(services, services.twilio)
    record = sender._record
    send = sender._send
    spans: list[float] = []

    async def timed_record(results: Any) -> None:
        started = time.perf_counter()
        await record(results)
        phases.record += time.perf_counter() - started

    async def timed_send(item: Any, customer_id: str) -> Any:
        spans.append(time.perf_counter())
        result = await send(item, customer_id)
        spans.append(time.perf_counter())
        return result

    sender._record = timed_record  # type: ignore[method-assign]
    sender._send = timed_send  # type: ignore[method-assign]
    handled = 0
    while True:
        spans.clear()
        started = time.perf_counter()
        n = await sender.run_once()
        if not n:
            break
        ended = time.perf_counter()
        phases.total += ended - started
        phases.rounds += 1
        if spans:
            phases.before += min(spans) - started
            phases.sends += max(spans) - min(spans)
            phases.after += ended - max(spans)
        handled += n
    return handled


def sandbox_alone(url: str, seconds: int, callback: str) -> WrkRun:
    """wrk posting Message creates straight at the sandbox (its own limit)."""

    body = encode_form(
        [
            ("To", "+16192004567"),
            ("From", OUR_NUMBER),
            ("Body", "Reference message"),
            ("StatusCallback", callback),
        ]
    ).decode()
    auth = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    cmd = [
        "wrk", f"-t{WRK_THREADS}", f"-c{SEND_CONCURRENCY}", f"-d{seconds}s", "--timeout", "30s",
        "-s", str(LUA_CREATE), f"{url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
        "--", body, auth,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60)
    statuses: dict[int, int] = {}
    seconds_run = float(seconds)
    rps_line = ""
    for line in out.stdout.splitlines():
        if line.startswith("Requests/sec"):
            rps_line = line.strip()
        match = re.match(r"SMSBENCH status_(\d+)=(\d+)", line)
        if match:
            statuses[int(match[1])] = statuses.get(int(match[1]), 0) + int(match[2])
        match = re.match(r"SMSBENCH duration_us=(\d+)", line)
        if match:
            seconds_run = int(match[1]) / 1e6
    total = sum(statuses.values())
    return WrkRun(seconds_run, total, statuses, [], [], [], {}, rps_line)


async def outbound_part(
    plan: Plan, db_url: str, db: Database, workdir: Path, profile: Path | None
) -> list[Verdict]:
    say("Outbound SMS")
    # The sender's status callback URLs point at a bound port that does not listen.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    callback_base = f"http://127.0.0.1:{closed.getsockname()[1]}"
    sandbox_config = {
        "account_sid": ACCOUNT_SID,
        "auth_token": AUTH_TOKEN,
        "hub_url": callback_base,
        "numbers": [OUR_NUMBER],
        # Twilio posts callbacks from elsewhere; in the sandbox they would share its one
        # process (and its httpx pool collapses under a backlog, see with_callbacks).
        "drop_statuses": ALL_STATUSES,
    }
    sandbox = Server("sandbox", workdir, sandbox_config)
    settings = Settings(
        database_url=db_url,
        data_dir=str(workdir / "files"),
        public_url=callback_base,
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
        twilio_numbers=(OUR_NUMBER,),
        twilio_api_base=sandbox.url,
        twilio_sms_rate=0,
        log_level="WARNING",
    )
    services = Services.build(settings, db)
    verdicts: list[Verdict] = []
    try:
        async with db.read() as conn:
            recipients = list(
                (
                    await conn.execute(
                        sa.select(identities.c.customer_id)
                        .where(identities.c.value.like("+1212%"))
                        .order_by(identities.c.value)
                        .limit(plan.recipients)
                    )
                ).scalars()
            )
        queued_in = await queue_messages(db, settings, recipients, plan.messages)
        await analyze(db)
        say(
            f"  queued {plan.messages:,} messages to {len(recipients):,} customers with "
            f"queue_sms, 500 per transaction: {queued_in:.1f} s "
            f"({rate(plan.messages / queued_in)}/s), then ANALYZE"
        )
        sandbox.wait_ready()
        callback = f"{callback_base}/webhooks/twilio/sms/status?event=reference"
        load = os.getloadavg()[0]
        cpu0 = sandbox.cpu()
        alone = sandbox_alone(sandbox.url, plan.sandbox_wrk, callback)
        alone_cpu = (sandbox.cpu() - cpu0) / max(alone.ok, 1)
        say(
            f"  sandbox alone, wrk -t{WRK_THREADS} -c{SEND_CONCURRENCY} posting creates: "
            f"{rate(alone.ok_rate)} creates/s ({alone.status_text()}; sandbox CPU "
            f"{alone_cpu * 1e3:.2f} ms/create; load average {load:.1f})"
        )
        load = os.getloadavg()[0]
        cpu0 = sandbox.cpu()
        sdk = await sdk_loop(settings, plan.reference, callback)
        sdk_sandbox_cpu = (sandbox.cpu() - cpu0) / plan.reference
        say(
            f"  SDK loop, TwilioClient.send_sms, {SEND_CONCURRENCY} at a time, no database: "
            f"{rate(sdk.rate)} messages/s; CPU per message: bench {sdk.cpu * 1e3:.2f} ms, "
            f"sandbox {sdk_sandbox_cpu * 1e3:.2f} ms; load average {load:.1f}"
        )

        phases = Phases()
        load = os.getloadavg()[0]
        sandbox_cpu0 = sandbox.cpu()
        cpu0 = time.process_time()
        started = time.perf_counter()
        expected = plan.messages / 400 + 5
        with profiling(os.getpid(), profile and profile / "sender.txt", expected):
            handled = await drain(services, phases)
        elapsed = time.perf_counter() - started
        bench_cpu = (time.process_time() - cpu0) / handled
        sandbox_cpu = (sandbox.cpu() - sandbox_cpu0) / handled
        sender_rate = handled / elapsed
        say(
            f"  SmsSender.run_once loops (batch 200, {SEND_CONCURRENCY} concurrent, "
            f"TWILIO_SMS_RATE=0): {handled:,} messages in {elapsed:.2f} s = "
            f"{rate(sender_rate)} messages/s (load average {load:.1f})"
        )
        rounds = max(phases.rounds, 1)
        say(
            f"    per round of {plan.messages // rounds} (wall): claim + consent reads "
            f"{phases.before / rounds * 1e3:.0f} ms, sends {phases.sends / rounds * 1e3:.0f}"
            f" ms, then the last record {phases.after / rounds * 1e3:.0f} ms "
            f"({phases.rounds} rounds; recording took {phases.record / rounds * 1e3:.0f} ms "
            f"a round, mostly during the sends); sends are "
            f"{phases.sends / phases.total:.0%} of the time"
        )
        say(
            f"    CPU per message: bench process (sender, SDK, DB driver) {bench_cpu * 1e3:.2f}"
            f" ms, sandbox {sandbox_cpu * 1e3:.2f} ms"
        )
        async with db.read() as conn:
            states: dict[str, int] = dict(
                (
                    await conn.execute(
                        sa.select(outbox.c.state, sa.func.count()).group_by(outbox.c.state)
                    )
                ).all()
            )
            distinct_sids = (
                await conn.execute(
                    sa.select(sa.func.count(sa.distinct(outbox.c.provider_id))).where(
                        outbox.c.state == "sent"
                    )
                )
            ).scalar_one()
            attached = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(events)
                    .where(
                        events.c.direction == "outbound",
                        events.c.channel == "sms",
                        events.c.external_id.is_not(None),
                    )
                )
            ).scalar_one()
        all_sent = states == {"sent": plan.messages} and distinct_sids == attached == handled
        say(
            f"  outbox states: {states}; distinct MessageSids recorded: {distinct_sids:,}; "
            f"events with their sid: {attached:,}"
        )
        verdicts += [
            Verdict(
                "outbound SMS drained to the sandbox (SmsSender)",
                f"{rate(sender_rate)} messages/s",
                f"target {rate(OUTBOUND_TARGET)}/s; SDK loop alone {rate(sdk.rate)}/s, "
                f"sandbox alone {rate(alone.ok_rate)}/s",
                f"{sender_rate / OUTBOUND_TARGET:.0%} of target, "
                f"{sender_rate / sdk.rate:.0%} of the SDK loop",
                sender_rate >= OUTBOUND_TARGET,
            ),
            Verdict(
                "every queued message sent once",
                f"{states.get('sent', 0):,} sent, {distinct_sids:,} distinct MessageSids",
                f"{plan.messages:,} queued",
                "exact" if all_sent else "MISMATCH",
                all_sent,
            ),
        ]
    finally:
        await services.writer.stop()
        if services.twilio is not None:
            await services.twilio.aclose()
        sandbox.stop()
    if plan.with_callbacks:
        # As the brief first put it: the sandbox posts its callbacks to the closed port.
        noisy = Server(
            "sandbox", workdir, {**sandbox_config, "drop_statuses": []}, name="sandbox-callbacks"
        )
        try:
            noisy.wait_ready()
            noisy_settings = dataclasses.replace(settings, twilio_api_base=noisy.url)
            load = os.getloadavg()[0]
            cpu0 = noisy.cpu()
            try:
                slow = await asyncio.wait_for(
                    sdk_loop(noisy_settings, plan.with_callbacks, callback), CALLBACKS_TIMEOUT
                )
            except TimeoutError:
                figure = f"not done after {CALLBACKS_TIMEOUT:.0f} s"
            else:
                figure = f"{rate(slow.rate)} messages/s"
            noisy_cpu = (noisy.cpu() - cpu0) / plan.with_callbacks
            say(
                f"  info: the same SDK loop, {plan.with_callbacks} messages, against a sandbox"
                f" that posts status callbacks to the closed port: {figure}; sandbox CPU "
                f"{noisy_cpu * 1e3:.1f} ms/message (load average {load:.1f})"
            )
        finally:
            noisy.stop()
    closed.close()
    return verdicts
