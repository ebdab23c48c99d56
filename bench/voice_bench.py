"""The screen-pop benchmark: an incoming call's webhook to the agent's live stream.

``python -m bench.voice_bench [--db sqlite|postgresql] [--quick]``
(``--quick``: 10k customers, 100k events, 10 rounds: a smoke run of about a minute).

In one run, on a fresh database migrated with ``timeline.migrate.upgrade``:

1. build N events over M customers with Core ``insert()`` executemany
   (``bench.timeline_bench.build``: skewed counts, realistic rows), then ANALYZE;
2. serve the hub (``create_app(settings, run_workers=False)``, Twilio Voice on) with
   uvicorn in a subprocess, exactly as ``bench.serve`` does, plus an empty endpoint on
   the same server: ``POST /bench/empty`` reads a Twilio-style form and answers
   ``<Response/>`` (the web layer's own cost, PEERS.md);
3. an agent's browser: one SSE connection to ``/api/v1/stream`` with a bearer token;
4. rounds of ``--calls`` (20) signed incoming-call webhooks sent at once, each on its
   own keep-alive connection (raw HTTP/1.1, requests signed before the clock starts),
   from callers that are known customers (half of them busy, with >= 50 events) or,
   one in ten, new numbers; the clock stops when the screen pop of that call
   (``event: call``) arrives at the stream, read as raw bytes (the CallSid is found in
   the first bytes, no JSON parsing on the clock); alternating with rounds of the same
   number of requests at once to the empty endpoint, whose round trip is the limit.

Targets (printed with PASS/MISS, judged on SQLite): screen pop p99 < 50 ms, and
<= 3 x the empty endpoint's round trip p99 under the same burst. The webhook's own round
trip (answered after the pop is published) is shown too. Before serving, the CPU time
per call of each stage of the webhook (parse, ingest, call rows, pop read, commit, SSE
text, the WAL checkpoint after a batch) is measured in process on the same database
(``stages``). ``--role`` picks who streams:
an agent (team-scoped, as agents are: the stream checks each customer's team) or a
supervisor (no check). ``COMMHUB_BENCH_PROFILE=file`` writes a cProfile of the server's
event loop. Timings never go into tests; docs/performance.md records runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import platform
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench.data import NEW_AREAS, BuiltCustomer, Generator
from bench.timeline_bench import (
    BUSY,
    ROOT,
    Latency,
    Verdict,
    analyze,
    build,
    free_port,
    load,
    ms,
    say,
    throwaway_database,
    versions,
)
from channels.twilio import voice
from channels.twilio.forms import encode_form
from channels.twilio.signature import SIGNATURE_HEADER, sign
from hub.api.stream import sse
from hub.auth import add_agent
from hub.voice_state import pops_and_audiences, ringing
from timeline import migrate
from timeline.calls import open_many
from timeline.db import Database
from timeline.ingest import ingest_batch

ACCOUNT_SID = "AC" + "b3" * 16
AUTH_TOKEN = "bench-voice-token"
OUR_NUMBER = "+14155550123"  # bench.data.OUR_NUMBER
VOICE_PATH = "/webhooks/twilio/voice"
EMPTY_PATH = "/bench/empty"
POP_LIMIT = 0.050
_SID = re.compile(rb'"external_id":"(CA[0-9a-f]{32})"')


# -- the server ----------------------------------------------------------------------------


def serve_hub(port: int, db_url: str, data_dir: str) -> None:
    """The hub with Twilio Voice on, plus the empty endpoint, on uvicorn (foreground)."""
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from bench.serve import serve
    from config import Settings
    from hub.app import create_app

    async def empty(request: Request) -> Response:
        await request.form()
        return Response('<?xml version="1.0" encoding="UTF-8"?><Response/>', media_type="text/xml")

    settings = Settings(
        database_url=db_url,
        data_dir=data_dir,
        public_url=f"http://127.0.0.1:{port}",
        log_level="WARNING",
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
        twilio_numbers=(OUR_NUMBER,),
        twilio_api_base="http://127.0.0.1:9",  # never called: no click-to-call here
        twilio_voice_clients=("agent-1", "agent-2"),
    )
    app = create_app(settings, run_workers=False)
    app.router.routes.insert(0, Route(EMPTY_PATH, empty, methods=["POST"]))
    profile_to = os.environ.get("COMMHUB_BENCH_PROFILE")
    if not profile_to:
        serve(app, port)
        return
    # The event loop's thread only (aiosqlite's thread is not in it): where Python time goes.
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        serve(app, port)
    finally:
        profiler.disable()
        profiler.dump_stats(profile_to)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def hub_server(db_url: str, data_dir: Path) -> Iterator[tuple[int, int]]:
    """``python -m bench.voice_bench serve`` on a free port (port, pid), stopped afterwards."""
    port = free_port()
    args = ["serve", "--port", str(port), "--db-url", db_url, "--data-dir", str(data_dir)]
    proc = subprocess.Popen([sys.executable, "-m", "bench.voice_bench", *args], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the hub exited with {proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the hub did not listen") from None
                time.sleep(0.05)
        yield port, proc.pid
    finally:
        # SIGINT: uvicorn shuts down, then re-raises it as KeyboardInterrupt, so a
        # profile (COMMHUB_BENCH_PROFILE) is written on the way out.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the client ----------------------------------------------------------------------------


def inbound_form(sid: str, caller: str) -> list[tuple[str, str]]:
    """The incoming-call webhook form Twilio sends (the fields of the recorded fixture)."""
    return [
        ("AccountSid", ACCOUNT_SID),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", sid),
        ("CallStatus", "ringing"),
        ("Called", OUR_NUMBER),
        ("CalledCity", "SAN FRANCISCO"),
        ("CalledCountry", "US"),
        ("CalledState", "CA"),
        ("CalledZip", "94103"),
        ("Caller", caller),
        ("CallerCountry", "US"),
        ("Direction", "inbound"),
        ("From", caller),
        ("FromCountry", "US"),
        ("To", OUR_NUMBER),
        ("ToCity", "SAN FRANCISCO"),
        ("ToCountry", "US"),
        ("ToState", "CA"),
        ("ToZip", "94103"),
        ("StirVerstat", "TN-Validation-Passed-A"),
    ]


def request_bytes(port: int, path: str, form: list[tuple[str, str]], signed: bool) -> bytes:
    """A complete HTTP/1.1 keep-alive POST of the form, signed for the hub's public URL."""
    body = encode_form(form)
    signature = sign(AUTH_TOKEN, f"http://127.0.0.1:{port}{path}", form) if signed else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n"
        f"{SIGNATURE_HEADER}: {signature}\r\nUser-Agent: TwilioProxy/1.1\r\n\r\n"
    )
    return head.encode() + body


class Connection:
    """One keep-alive HTTP/1.1 connection: send prepared bytes, read one answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def answer(self) -> tuple[int, bytes]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        body = await self.reader.readexactly(length)
        return status, body

    def close(self) -> None:
        self.writer.close()


class Stream:
    """The agent's SSE connection; notes when each call's screen pop arrives."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.waiting: dict[str, asyncio.Future[float]] = {}
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self, port: int, token: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # HTTP/1.0: no chunked framing, the body is the raw event stream.
        writer.write(
            f"GET /api/v1/stream HTTP/1.0\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"the stream answered {head[:80]!r}")
        self._writer = writer
        self._task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        pending = bytearray()
        while chunk := await reader.read(1 << 20):
            now = time.perf_counter()
            pending += chunk
            while (end := pending.find(b"\n\n")) >= 0:
                message = bytes(pending[: end + 2])
                del pending[: end + 2]
                if not message.startswith(b"event: call\n"):
                    continue
                found = _SID.search(message, 0, 400)
                if found is None:
                    continue
                sid = found.group(1).decode()
                if sid not in self.arrived:
                    self.arrived[sid] = now
                    future = self.waiting.pop(sid, None)
                    if future is not None and not future.done():
                        future.set_result(now)

    def expect(self, sid: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if sid in self.arrived:
            future.set_result(self.arrived[sid])
        else:
            self.waiting[sid] = future
        return future

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def callers(gen: Generator, built: Sequence[BuiltCustomer], count: int) -> list[str]:
    """Who calls: half busy customers, four in ten any customer, one in ten new numbers."""
    busy = [c for c in built if c.events >= BUSY] or list(built)
    out = []
    for i in range(count):
        if i % 10 == 9:
            out.append(gen.phone(NEW_AREAS))
        elif i % 2 == 0:
            out.append(gen.rng.choice(busy).phone)
        else:
            out.append(gen.rng.choice(built).phone)
    return out


async def burst(
    port: int,
    conns: list[Connection],
    path: str,
    forms: list[list[tuple[str, str]]],
    stream: Stream | None,
) -> tuple[list[float], list[float]]:
    """Send one request per connection at once; (round trips, screen-pop latencies)."""
    signed = stream is not None
    prepared = [request_bytes(port, path, form, signed) for form in forms]
    sids = [dict(form)["CallSid"] for form in forms]
    pops = [stream.expect(sid) for sid in sids] if stream is not None else []
    sent: list[float] = []
    for conn, data in zip(conns, prepared, strict=True):
        sent.append(time.perf_counter())
        conn.writer.write(data)

    async def one(conn: Connection, start: float) -> float:
        status, body = await conn.answer()
        took = time.perf_counter() - start
        if status != 200:
            raise RuntimeError(f"{path} answered {status}: {body[:200]!r}")
        return took

    trips = await asyncio.wait_for(
        asyncio.gather(*(one(c, t) for c, t in zip(conns, sent, strict=True))), 30
    )
    latencies: list[float] = []
    if pops:
        arrived = await asyncio.wait_for(asyncio.gather(*pops), 30)
        latencies = [at - start for at, start in zip(arrived, sent, strict=True)]
    return list(trips), latencies


async def measure(
    port: int,
    token: str,
    gen: Generator,
    built: Sequence[BuiltCustomer],
    args: argparse.Namespace,
    pid: int | None = None,
) -> tuple[dict[str, Latency], dict[str, float]]:
    """Interleaved rounds of calls and of empty requests; the first two of each warm up.

    Also the server's CPU seconds per request of each kind (when its ``pid`` is given).
    """
    stream = Stream()
    await stream.open(port, token)
    hub_conns = [await Connection.open(port) for _ in range(args.calls)]
    empty_conns = [await Connection.open(port) for _ in range(args.calls)]
    samples: dict[str, list[float]] = {"pop": [], "webhook": [], "empty": []}
    cpu = {"hub": 0.0, "empty": 0.0}
    warmup = 2
    try:
        for round_no in range(args.rounds + warmup):
            forms = [
                inbound_form("CA" + secrets.token_hex(16), caller)
                for caller in callers(gen, built, args.calls)
            ]
            order = ("hub", "empty") if round_no % 2 == 0 else ("empty", "hub")
            for which in order:
                gc.collect()
                before = cpu_seconds(pid) if pid else 0.0
                if which == "hub":
                    trips, pops = await burst(port, hub_conns, VOICE_PATH, forms, stream)
                    if round_no >= warmup:
                        samples["webhook"] += trips
                        samples["pop"] += pops
                else:
                    trips, _ = await burst(port, empty_conns, EMPTY_PATH, forms, None)
                    if round_no >= warmup:
                        samples["empty"] += trips
                if pid and round_no >= warmup:
                    cpu[which] += cpu_seconds(pid) - before
                await asyncio.sleep(0.05)
    finally:
        for conn in hub_conns + empty_conns:
            conn.close()
        await stream.close()
    n = args.calls
    per_request = {k: v / (args.rounds * n) for k, v in cpu.items()}
    return {
        "pop": Latency.of(
            f"screen pop: webhook sent -> SSE received ({n} at once)", samples["pop"]
        ),
        "webhook": Latency.of(f"webhook round trip ({n} at once)", samples["webhook"]),
        "empty": Latency.of(f"empty endpoint round trip ({n} at once)", samples["empty"]),
    }, per_request


STAGES = (
    "parse",
    "ingest",
    "call rows",
    "pop read",
    "commit",
    "SSE text",
    "WAL checkpoint (after the batch, off the path)",
)


async def stages(
    url: str, gen: Generator, built: Sequence[BuiltCustomer], calls: int, rounds: int = 20
) -> dict[str, float]:
    """In-process CPU seconds per call of each stage of an incoming call, ``calls`` at once.

    The steps ``hub.voice_state.Incoming`` takes for a batch, without HTTP:
    ``parse_inbound_call``; in one write transaction ``ingest_batch`` of the calls, the
    calls' rows (``open_many``), their pops as the stream sends them and their audiences
    (``pops_and_audiences``); the commit; each pop's SSE message (``hub.api.stream.sse``); the
    WAL checkpoint ``Database.write`` asks for after the commit (``timeline.wal``; in the
    hub it runs beside the requests). ``time.process_time`` counts every thread
    (aiosqlite's too). Two rounds warm up.
    """
    db = Database.from_url(url)
    totals = dict.fromkeys(STAGES, 0.0)
    try:
        for round_no in range(rounds + 2):
            forms = [
                inbound_form("CA" + secrets.token_hex(16), caller)
                for caller in callers(gen, built, calls)
            ]
            took: list[float] = []
            t = time.process_time()
            submitted = [voice.parse_inbound_call(form)[0] for form in forms]
            took.append(time.process_time() - t)
            async with db.write() as conn:
                t = time.process_time()
                result = await ingest_batch(conn, submitted, region="US")
                stored = [o.event for o in result.outcomes if o.event is not None]
                took.append(time.process_time() - t)
                t = time.process_time()
                await open_many(conn, [ringing(e) for e in stored])
                took.append(time.process_time() - t)
                t = time.process_time()
                pops = [pop for pop, _ in await pops_and_audiences(conn, stored)]
                took.append(time.process_time() - t)
                t = time.process_time()
            took.append(time.process_time() - t)
            t = time.process_time()
            for pop in pops:
                sse("call", pop)
            took.append(time.process_time() - t)
            t = time.process_time()
            await db.checkpoints.wait()  # the one write() asked for after its commit
            took.append(time.process_time() - t)
            if round_no >= 2:
                for name, seconds in zip(STAGES, took, strict=True):
                    totals[name] += seconds / calls
    finally:
        await db.dispose()
    return {name: seconds / rounds for name, seconds in totals.items()}


async def run(args: argparse.Namespace) -> int:
    gen = Generator()
    say(
        f"commhub voice bench  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  db={args.db}  "
        f"events={args.events:,}  customers={args.customers:,}  "
        f"calls={args.calls} at once x {args.rounds} rounds  stream role={args.role}"
    )
    say(
        f"machine: {os.cpu_count()} CPUs ({platform.machine()}), "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}; {versions()}"
    )
    async with throwaway_database(args.db) as target:
        db = Database.from_url(target.url)
        try:
            await migrate.upgrade(db)
            await db.dispose()
            say(f"1. build ({load()})")
            built = await build(target.url, gen, args.events, args.customers)
            say(f"  ANALYZE {await analyze(db):.1f} s")
            async with db.write() as conn:
                _, token = await add_agent(conn, email="bench@commhub.example", role=args.role)
        finally:
            await db.dispose()
        say(f"  CPU per call by stage, in process, {args.calls} at once x 20 rounds ({load()}):")
        by_stage = await stages(target.url, gen, built, args.calls)
        say(
            "    "
            + ", ".join(f"{name} {seconds * 1000:.3f} ms" for name, seconds in by_stage.items())
            + f"; sum {sum(by_stage.values()) * 1000:.3f} ms"
        )
        gc.collect()
        gc.freeze()
        say(f"2. serve the hub and the empty endpoint on one uvicorn ({load()})")
        with hub_server(target.url, target.workdir / "files") as (port, pid):
            say(
                f"3./4. {args.rounds} rounds of {args.calls} calls at once, interleaved "
                f"with {args.calls} empty requests at once ({load()})"
            )
            figures, cpu = await measure(port, token, gen, built, args, pid)
    for latency in figures.values():
        say(latency.line(58))
    if cpu["empty"] > 0:
        say(
            f"  server CPU per request: incoming call {cpu['hub'] * 1000:.2f} ms, "
            f"empty endpoint {cpu['empty'] * 1000:.2f} ms "
            f"({cpu['hub'] / cpu['empty']:.1f}x; /proc, 10 ms ticks summed over the rounds)"
        )
    pop, empty = figures["pop"], figures["empty"]
    judged = args.db == "sqlite"
    note = "" if judged else " (targets set for SQLite; shown for PostgreSQL)"
    verdicts = [
        Verdict(
            "screen pop p99 < 50 ms" + note,
            ms(pop.p99).strip(),
            ms(POP_LIMIT).strip(),
            f"{pop.p99 / POP_LIMIT:.2f}x limit",
            pop.p99 < POP_LIMIT,
            judged=judged,
        ),
        Verdict(
            "screen pop p99 <= 3 x empty endpoint p99" + note,
            ms(pop.p99).strip(),
            ms(3 * empty.p99).strip(),
            f"{pop.p99 / empty.p99:.1f}x empty p99 {ms(empty.p99).strip()}",
            pop.p99 <= 3 * empty.p99,
            judged=judged,
        ),
        Verdict(
            "screen pop p50 vs empty endpoint p50",
            ms(pop.p50).strip(),
            "-",
            f"{pop.p50 / empty.p50:.1f}x empty p50 {ms(empty.p50).strip()}",
            True,
            judged=False,
        ),
    ]
    say(f"targets ({load()})")
    for verdict in verdicts:
        say(verdict.line())
    return 0 if all(v.ok for v in verdicts if v.judged) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="(internal) the hub server of the benchmark")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--db-url", required=True)
    serve.add_argument("--data-dir", required=True)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--quick", action="store_true", help="10k customers, 100k events")
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=20, help="calls arriving at once")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument(
        "--role",
        choices=("agent", "supervisor"),
        default="agent",
        help="the streaming agent: an agent (team-scoped: the stream checks each customer) "
        "or a supervisor (sees every customer: no check)",
    )
    args = parser.parse_args(argv)
    if args.command == "serve":
        logging.basicConfig(level=logging.WARNING)
        serve_hub(args.port, args.db_url, args.data_dir)
        return 0
    if args.quick:
        args.customers, args.events, args.rounds = 10_000, 100_000, 10
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
