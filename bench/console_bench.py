"""The console benchmark: the customer's timeline page rendered server-side.

``python -m bench.console_bench [--events N --customers M --requests R]`` (``--quick``:
100k events over 10k customers). SQLite only (the target is set for it).

In one run, on a fresh database migrated with ``timeline.migrate.upgrade``:

1. build N events over M customers (``bench.data`` through ``bench.timeline_bench.build``:
   skewed counts, realistic rows, about a third of email with HTML), then ANALYZE;
2. an agent and a console session (``hub.sessions.SessionStore``), whose cookie every
   request carries: the pages go through the real app with its session check, security
   headers, active-call banners and templates;
3. the hub served by ``bench.serve hub`` and the empty endpoint by ``bench.serve empty``
   (the same uvicorn settings, subprocesses), then, from one keep-alive raw HTTP/1.1
   client per server, requests interleaved in rotating order over busy customers
   (>= 50 events): the 360 page ``GET /ui/customers/{id}`` (profile, composer, the first
   30 timeline events), the endless-scrolling fragment ``GET
   /ui/customers/{id}/timeline?cursor=...`` (the next 30 events, the cursor taken from
   the page), and the empty endpoint;
4. server CPU per request of each (blocks of requests of one kind, ``/proc`` CPU of the
   server process): unlike latency it hardly moves when other work shares the machine.

Targets (printed with PASS/MISS): page p99 < 50 ms, fragment p99 < 50 ms (issue 6: "the
timeline page renders server-side in under 50 ms at 1M events"); the ratio to the empty
endpoint is shown beside them. Timings never go into tests; docs/performance.md
("Performance: the console") records runs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import html
import re
import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from bench.data import Generator
from bench.timeline_bench import (
    BUSY,
    KeepAlive,
    Latency,
    Verdict,
    analyze,
    build,
    code_version,
    cpu_seconds,
    load,
    ms,
    say,
    server,
    throwaway_database,
    versions,
)
from config import Settings
from hub import sessions
from hub.auth import add_agent
from hub.sessions import SessionStore
from timeline import migrate
from timeline.db import Database

TARGET = 0.050
EMPTY_PATH = "/api/v1/customers/{id}/timeline"
_NEXT = re.compile(r'hx-get="(/ui/customers/[^"]+/timeline\?[^"]+)"')


async def console_session(url: str) -> str:
    """An agent (supervisor: no team filter) and a console session; the Cookie header."""
    db = Database.from_url(url)
    try:
        async with db.write() as conn:
            agent_id, _ = await add_agent(
                conn, email="bench@commhub.example", role="supervisor", name="Bench"
            )
        value = await SessionStore(db).create(agent_id)
    finally:
        await db.dispose()
    name = sessions.cookie_name(Settings(database_url=url).public_url)
    return f"{name}={value}"


def measure(
    url: str,
    data_dir: str,
    cookie: str,
    sample: list[str],
    requests: int,
    cpu_block: int,
    busiest: str,
) -> tuple[dict[str, Latency], dict[str, int]]:
    """Page, fragment and empty endpoint, interleaved; then CPU per request in blocks;
    then (shown, not judged) the page of the customer with the most events."""
    hub_args = ["hub", "--db-url", url, "--data-dir", data_dir]
    with server(hub_args) as (hub_port, hub_pid), server(["empty"]) as (empty_port, empty_pid):
        header = f"Cookie: {cookie}\r\n"
        hub, empty = KeepAlive(hub_port, header), KeepAlive(empty_port, header)
        try:
            paths: dict[str, list[str]] = {"page": [], "fragment": [], "empty": []}
            sizes: dict[str, int] = {}
            for customer_id in sample:  # warm-up, and the second page's cursor
                status, body = hub.get(f"/ui/customers/{customer_id}")
                text = body.decode()
                found = _NEXT.search(text)
                if status != 200 or 'class="event' not in text or found is None:
                    raise RuntimeError(f"the page answered {status}: {text[:300]!r}")
                paths["page"].append(f"/ui/customers/{customer_id}")
                paths["fragment"].append(html.unescape(found.group(1)))
                paths["empty"].append(EMPTY_PATH.format(id=customer_id))
                sizes["page"] = max(sizes.get("page", 0), len(body))
            for path in paths["fragment"]:
                status, body = hub.get(path)
                if status != 200 or b'class="event' not in body:
                    raise RuntimeError(f"the fragment answered {status}: {body[:300]!r}")
                sizes["fragment"] = max(sizes.get("fragment", 0), len(body))
            clients = {"page": hub, "fragment": hub, "empty": empty}
            names = list(paths)
            samples: dict[str, list[float]] = {name: [] for name in names}
            gc.collect()
            for i in range(requests):
                shift = i % len(names)
                for name in names[shift:] + names[:shift]:
                    path = paths[name][i % len(sample)]
                    t = time.perf_counter()
                    status, _ = clients[name].get(path)
                    spent = time.perf_counter() - t
                    if status != 200:
                        raise RuntimeError(f"{name} answered {status}")
                    samples[name].append(spent)
            cpu: dict[str, float] = {}
            for name in names:
                pid = empty_pid if name == "empty" else hub_pid
                before = cpu_seconds(pid)
                for i in range(cpu_block):
                    clients[name].get(paths[name][i % len(sample)])
                cpu[name] = (cpu_seconds(pid) - before) / cpu_block
            top: list[float] = []
            before = cpu_seconds(hub_pid)
            for _ in range(50):
                t = time.perf_counter()
                status, _ = hub.get(f"/ui/customers/{busiest}")
                top.append(time.perf_counter() - t)
                if status != 200:
                    raise RuntimeError(f"the busiest customer's page answered {status}")
            top_cpu = (cpu_seconds(hub_pid) - before) / 50
        finally:
            hub.close()
            empty.close()
    labels = {
        "page": "360 page GET /ui/customers/{id}",
        "fragment": "timeline fragment (2nd page, cursor)",
        "empty": "empty endpoint (same uvicorn settings)",
    }
    figures = {name: Latency.of(labels[name], s, cpu[name]) for name, s in samples.items()}
    figures["busiest"] = Latency.of("360 page of the busiest customer (info)", top, top_cpu)
    return figures, sizes


async def run(args: argparse.Namespace) -> int:
    gen = Generator()
    say(
        f"commhub console bench  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  db=sqlite  "
        f"events={args.events:,}  customers={args.customers:,}"
    )
    say(f"SQLite {sqlite3.sqlite_version}; {versions()}")
    say(f"code: {code_version()}")
    async with throwaway_database("sqlite") as target:
        db = Database.from_url(target.url)
        try:
            await migrate.upgrade(db)
            await db.dispose()
            say(f"1. build ({load()})")
            built = await build(target.url, gen, args.events, args.customers)
            say(f"  ANALYZE {await analyze(db):.1f} s")
        finally:
            await db.dispose()
        busy = [c for c in built if c.events >= BUSY]
        gen.rng.shuffle(busy)
        sample = [c.id for c in busy[: args.customers_sampled]]
        say(f"  {len(busy):,} customers with >= {BUSY} events, {len(sample):,} of them sampled")
        top = max(built, key=lambda c: c.events)
        say(f"  the busiest customer has {top.events:,} events")
        cookie = await console_session(target.url)
        say(
            f"2. {args.requests:,} requests each, interleaved; then {args.cpu_block:,} of each "
            f"for CPU ({load()})"
        )
        figures, sizes = measure(
            target.url,
            str(target.workdir / "files"),
            cookie,
            sample,
            args.requests,
            args.cpu_block,
            top.id,
        )
    for latency in figures.values():
        say(latency.line())
    say(f"  largest answers: page {sizes['page']:,} bytes, fragment {sizes['fragment']:,} bytes")
    empty = figures["empty"]
    verdicts = []
    for name, what in (("page", "360 page"), ("fragment", "timeline fragment")):
        got = figures[name]
        verdicts.append(
            Verdict(
                f"{what} p99 < 50 ms",
                ms(got.p99).strip(),
                ms(TARGET).strip(),
                f"{got.p99 / empty.p99:.1f}x empty p99 {ms(empty.p99).strip()}; "
                f"p50 {ms(got.p50).strip()}; server CPU {ms(got.cpu or 0).strip()} "
                f"vs empty {ms(empty.cpu or 0).strip()}",
                got.p99 < TARGET,
            )
        )
    say(f"targets ({load()})")
    for verdict in verdicts:
        say(verdict.line())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.console_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--events", type=int)
    parser.add_argument("--customers", type=int)
    parser.add_argument("--requests", type=int, help="requests of each kind (1000)")
    parser.add_argument("--cpu-block", type=int, help="requests of each kind for CPU (300)")
    parser.add_argument(
        "--customers-sampled", type=int, default=200, help="busy customers visited (200)"
    )
    parser.add_argument("--quick", action="store_true", help="100k events, 10k customers")
    args = parser.parse_args(argv)
    defaults = {
        "events": 100_000 if args.quick else 1_000_000,
        "customers": 10_000 if args.quick else 100_000,
        "requests": 300 if args.quick else 1000,
        "cpu_block": 100 if args.quick else 300,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
