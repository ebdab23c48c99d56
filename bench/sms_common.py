"""What the SMS benchmark's parts share: constants, sizes, verdicts, databases, servers.

See ``bench/sms_bench.py`` for what is measured and how.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import asyncpg
import phonenumbers
import sqlalchemy as sa

from channels.twilio.sandbox import shapes
from timeline.db import Database
from timeline.events import utcnow
from timeline.ids import new_id
from timeline.schema import customers, identities

ROOT = Path(__file__).resolve().parents[1]
LUA_REPLAY = ROOT / "bench" / "sms_replay.lua"
LUA_CREATE = ROOT / "bench" / "sms_create.lua"
PG_ADMIN_DSN = os.environ.get("COMMHUB_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

INBOUND_PATH = "/webhooks/twilio/sms"
PUBLIC_URL = "https://hub.bench.example"  # HUB_PUBLIC_URL: what Twilio signs
ACCOUNT_SID = "AC" + "b3" * 16
AUTH_TOKEN = "bench" + "7" * 27
OUR_NUMBER = "+14155550123"
KNOWN_AREAS = (212, 213, 312, 415, 617, 206, 303, 512, 404, 305, 702, 718, 646, 408, 510)
NEW_AREAS = (619, 858, 503, 602, 214, 615, 704, 919, 801, 916)
TEXTS = (
    "Running late, ten minutes, sorry about the traffic",
    "Can we move my appointment to Friday morning?",
    "Yes that works, see you then",
    "Is the clinic open on Saturday?",
    "Thanks! Got the invoice.",
    "Where do I park?",
    "Please call me back when possible",
    "Could you resend the tracking number for order 4521?",
    "ok",
    "Perfect, thank you so much for your help today",
)
WRK_THREADS = 2
WRK_CONNECTIONS = 32
INBOUND_TARGET = 0.50
OUTBOUND_TARGET = 1000.0
SEND_CONCURRENCY = 32  # SmsSender's default


@dataclasses.dataclass(frozen=True)
class Plan:
    """How big this run is."""

    duration: int  # seconds of each timed wrk run
    warmup: int  # seconds of each warm-up
    requests: int  # distinct signed inbound webhooks generated
    warm_requests: int  # of which the warm-ups use the first ones
    known: int  # pre-created customers that text in
    messages: int  # outbound messages queued and drained
    reference: int  # messages of the SDK reference loop
    recipients: int  # customers the outbound messages go to
    sandbox_wrk: int  # seconds of wrk against the sandbox alone
    replays: int  # accepted webhooks sent again (must be no-ops)
    with_callbacks: int  # SDK-loop messages to a sandbox that posts callbacks (0: skip)


# Each wrk run must not run out of distinct requests (a wrap-around sends repeats, which
# the exactness check does not count as stored): room for ~8,000 webhooks/s.
FULL = Plan(10, 2, 130_000, 16_000, 20_000, 10_000, 5_000, 5_000, 5, 1_000, 600)
QUICK = Plan(3, 1, 34_000, 8_000, 5_000, 1_000, 500, 500, 2, 200, 0)
#: Every status the sandbox moves a message to; dropped, it posts no callback at all.
ALL_STATUSES = ["sent", "delivered", "undelivered", "failed"]


def say(line: str = "") -> None:
    """Print a line at once (progress must show while building)."""
    print(line, flush=True)


def rate(value: float) -> str:
    return f"{value:,.0f}"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One judged figure: measured, the limit or target, their ratio and PASS/MISS."""

    name: str
    figure: str
    limit: str
    ratio: str
    ok: bool
    judged: bool = True

    def line(self) -> str:
        mark = ("PASS" if self.ok else "MISS") if self.judged else "info"
        return f"  {mark}  {self.name}: {self.figure} vs {self.limit} ({self.ratio})"


# -- databases ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def throwaway_database(kind: str, workdir: Path) -> AsyncIterator[str]:
    """The URL of a fresh, empty database of this kind, removed afterwards."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{workdir / 'hub.db'}"
        return
    name = f"commhub_smsbench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    try:
        yield f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"
    finally:
        admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        say(f"  dropped PostgreSQL database {name}")


def phones(areas: Sequence[int], count: int, skip: int = 0) -> list[str]:
    """``count`` distinct valid US numbers in these area codes (deterministic).

    Line numbers ending like the sandbox's test numbers (0001, 0003, 0005, 0007: failed or
    undelivered) are left out: every message here is meant to go through.
    """
    exchanges = [
        (area, exchange)
        for exchange in range(201, 1000)
        for area in areas
        if exchange % 100 != 11
        and exchange != 555
        and phonenumbers.is_valid_number(phonenumbers.parse(f"+1{area}{exchange}4567", None))
    ]
    lines = [n for n in range(10_000) if f"{n:04d}" not in shapes.TEST_NUMBERS]
    out: list[str] = []
    for i in range(skip, skip + count):
        area, exchange = exchanges[(i // len(lines)) % len(exchanges)]
        out.append(f"+1{area}{exchange}{lines[i % len(lines)]:04d}")
    return out


async def analyze(db: Database) -> None:
    """Refresh the planner's statistics, as autovacuum would (it is off on some servers)."""
    async with db.engine.connect() as conn:
        await conn.execute(sa.text("ANALYZE"))
        await conn.commit()


async def create_customers(db: Database, numbers: Sequence[str]) -> list[str]:
    """A customer with one phone identity for each number (Core executemany)."""
    ids = [new_id() for _ in numbers]
    now = utcnow()
    async with db.write() as conn:
        for start in range(0, len(ids), 5_000):
            part = range(start, min(start + 5_000, len(ids)))
            await conn.execute(
                customers.insert(),
                [
                    {
                        "id": ids[i],
                        "name": f"Customer {i}",
                        "timezone": None,
                        "attributes": {},
                        "created_at": now,
                        "updated_at": now,
                        "merged_into": None,
                        "erased_at": None,
                    }
                    for i in part
                ],
            )
            await conn.execute(
                identities.insert(),
                [
                    {
                        "id": new_id(),
                        "customer_id": ids[i],
                        "kind": "phone",
                        "value": numbers[i],
                        "created_at": now,
                    }
                    for i in part
                ],
            )
    return ids


# -- processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of a process (or one of its threads) so far (Linux)."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    with open(path, encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """One ``bench.sms_serve`` process on a loopback port."""

    def __init__(
        self,
        which: str,
        workdir: Path,
        config: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        self.which = name or which
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "bench.sms_serve", which, "--port", str(self.port)]
        if config is not None:
            path = workdir / f"{self.which}.json"
            path.write_text(json.dumps(config))
            cmd += ["--config", str(path)]
        self.log = open(workdir / f"{self.which}.log", "w+b")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.which} server exited: {self.output()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.02)
        raise RuntimeError(f"{self.which} server did not start: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def cpu(self) -> float:
        """CPU seconds of the whole process so far."""
        return cpu_seconds(self.proc.pid)

    def loop_cpu(self) -> float:
        """CPU seconds of its main thread (the event loop) so far."""
        return cpu_seconds(self.proc.pid, self.proc.pid)

    def stop(self) -> None:
        """Graceful stop (uvicorn drains requests, the hub's writer flushes)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@contextlib.contextmanager
def profiling(pid: int, out: Path | None, seconds: float) -> Iterator[None]:
    """py-spy record of ``pid`` for ``seconds`` while the block runs (if asked)."""
    if out is None:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    proc = subprocess.Popen(
        [
            spy,
            "record",
            "-p",
            str(pid),
            "-d",
            str(int(seconds)),
            "-r",
            "200",
            "-f",
            "raw",
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    try:
        yield
    finally:
        proc.wait(seconds + 30)


def machine() -> str:
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in (
            "uvicorn",
            "starlette",
            "sqlalchemy",
            "aiosqlite",
            "asyncpg",
            "twilio",
            "aiohttp",
        )
    )
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[1]
    return (
        f"nproc {os.cpu_count()}, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.machine()}, wrk {wrk}; {versions}; "
        f"niceness {os.getpriority(os.PRIO_PROCESS, 0)}, load average "
        f"{os.getloadavg()[0]:.1f}"
    )
