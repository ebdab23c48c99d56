"""The SMS benchmark: inbound webhooks and outbound sends, each beside its limit.

``python -m bench.sms_bench --db sqlite|postgresql [--quick] [--profile DIR] [--nice N]``

One run, on a throwaway database migrated with ``timeline.migrate.upgrade``:

1. Inbound. N distinct inbound-SMS webhooks (unique MessageSid, Twilio's field set from
   the sandbox's ``shapes.inbound_form``, ``X-Twilio-Signature`` computed with
   ``channels.twilio.signature.sign`` over ``HUB_PUBLIC_URL`` + path), alternately from a
   known customer (pre-created with Core inserts) and from a new number (each its own),
   are written to a data file that ``bench/sms_replay.lua`` replays with
   ``wrk -t2 -c32`` against two servers, each ``bench.sms_serve`` in its own process on
   loopback (uvicorn, h11, one process): the hub (``create_app(settings,
   run_workers=False)``) and the limit, an empty Starlette endpoint that reads the form
   and answers ``<Response/>``. Each gets a short warm-up, then the timed run; the empty
   endpoint is measured before and after the hub and the limit is their mean (the
   machine may be shared). The rate is 2xx answers per second; CPU seconds per request
   of each server (and of the hub's event-loop thread) are printed beside it.
   Afterwards: the events of the bench's MessageSids in the database are exactly the
   requests wrk issued, each once; replaying already accepted webhooks answers 200 and
   stores nothing; customers were made once per new sender.
2. Outbound. M messages queued with ``hub.sms_outbound.queue_sms`` (bulk transactions
   of 500, to many customers), drained by ``SmsSender(...).run_once()`` loops with
   ``TWILIO_SMS_RATE=0`` to the built-in sandbox in its own process. The sender's status
   callback URLs point at a port where nothing listens, and the sandbox drops every
   callback (``drop_statuses``): posted from the sandbox's one process they would cost
   it more than the creates, and its httpx pool collapses under a backlog of them (the
   full run shows that as ``info``). The references, on the same sandbox: wrk posting
   creates (the sandbox's own limit) and a loop of ``TwilioClient.send_sms`` through the
   real SDK, 32 at a time like the sender (no database: the sender's limit). Wall time
   per round (claim + consent reads, sends, record) and CPU seconds of the bench process
   and of the sandbox say which side the time goes to.

Targets (printed with PASS/MISS): inbound >= 50% of the empty endpoint (judged on
SQLite, shown as info on PostgreSQL); outbound >= 1,000 messages/s; every accepted
webhook and every queued message stored or sent exactly once. ``--quick`` is a smoke
run of under a minute. ``--profile DIR`` writes py-spy samples of the hub and of the
sender (not for figures: py-spy takes CPU too). Timings never go into tests;
docs/performance-sms.md records runs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench.sms_common import (
    FULL,
    QUICK,
    WRK_CONNECTIONS,
    WRK_THREADS,
    Verdict,
    machine,
    say,
    throwaway_database,
)
from bench.sms_inbound import inbound_part
from bench.sms_outbound import outbound_part
from timeline import migrate
from timeline.db import Database


async def main_async(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    profile: Path | None = args.profile
    say(
        f"commhub SMS benchmark, {args.db}{' (quick)' if args.quick else ''}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    say(f"  {machine()}")
    say(
        f"  inbound: wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{plan.duration}s (warm-up "
        f"{plan.warmup}s) over {plan.requests:,} distinct signed webhooks; outbound: "
        f"{plan.messages:,} messages"
    )
    workdir = Path(tempfile.mkdtemp(prefix="commhub-smsbench-"))
    verdicts: list[Verdict] = []
    started = time.perf_counter()
    try:
        async with throwaway_database(args.db, workdir) as url:
            db = Database.from_url(url)
            try:
                await migrate.upgrade(db)
                verdicts += await inbound_part(plan, url, db, workdir, profile)
                verdicts += await outbound_part(plan, url, db, workdir, profile)
            finally:
                await db.dispose()
    finally:
        if args.keep:
            say(f"  kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    say(f"Summary ({args.db}, {time.perf_counter() - started:.0f} s)")
    for verdict in verdicts:
        if args.db != "sqlite" and verdict.name.startswith("inbound"):
            verdict = dataclasses.replace(verdict, judged=False)
        say(verdict.line())
    return 0 if all(v.ok for v in verdicts if v.judged) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sms_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--quick", action="store_true", help="a smoke run under a minute")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the hub and the sender")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of the bench, its servers and wrk (negative needs root: on a shared "
        "machine it keeps other jobs from taking the measured cores; PostgreSQL's server "
        "keeps its own, so use it for SQLite runs)",
    )
    args = parser.parse_args(argv)
    if args.profile:
        args.profile = Path(args.profile).resolve()
        args.profile.mkdir(parents=True, exist_ok=True)
    if shutil.which("wrk") is None:
        parser.error("wrk is missing: apt-get install -y wrk")
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # children inherit it
    warnings.filterwarnings("ignore", message=r"BasicAuth is deprecated")
    warnings.filterwarnings("ignore", message=r"The 'auth' parameter is deprecated")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
