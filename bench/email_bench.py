"""The email benchmark: syncing a big mailbox into the hub, beside the IMAP limit.

``python -m bench.email_bench [--messages 20000] [--quick] [--profile]``

One run:

1. N varied messages are generated (seeded: plain text, text + HTML, replies in threads
   with In-Reply-To/References, attachments, ISO-8859-1 and encoded words, mail from our
   own address, auto-replies and delivery reports, about 2,000 senders) and written
   straight into the Maildir of an account of a throwaway Dovecot (``tests.peers.
   dovecot.run_dovecot``, the tests' configuration), with each file's mtime (the IMAP
   INTERNALDATE) at its Date. APPENDing them costs ~10 ms each (Dovecot fsyncs every
   APPEND): 200 s for 20,000, against ~2 s for the files. One SELECT lets Dovecot index
   them before anything is timed.
2. The limit: a raw aioimaplib client (connect, LOGIN, SELECT, UID SEARCH ALL, then
   ``UID FETCH <range> (UID BODY.PEEK[])``, stock aioimaplib) reads every message, with
   50 messages per FETCH and with the hub's FETCH size; each runs before and after the
   hub, and the fastest of the four runs is the limit.
3. The hub: ``MailIngest(services).sync_once(config)`` into an empty, migrated SQLite
   database (``timeline.migrate.upgrade``): the first sync of INBOX and Sent, parse,
   threading, ingest, attachments as files, bounces. Afterwards every message must be
   stored exactly once. The time spent is split by wrapping (not changing) the hub's
   steps (``MailIngest.parse_batch``, ``decide_threads``, ``store_batch``; the rest of
   the sync is waiting for IMAP), and the CPU time of the hub's process and of its
   parsing processes is reported per message.

Each measurement runs in a subprocess of its own (``--phase``), so its peak memory is
that process's ``ru_maxrss``. Targets (printed with PASS/MISS): hub sync >= 50% of the
raw FETCH rate; the hub's peak RSS <= 300 MB and its growth during the sync (peak minus
the RSS before it) <= 100 MB, whatever the mailbox size (batches, not the mailbox, must
be held). ``--profile`` adds a cProfile run of the sync (on its own copy of the
database; its time is not judged) and prints the top functions. ``--quick`` is a smoke
run with 2,000 messages. Timings never go into tests; docs/performance.md (email section)
records runs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import email.utils
import json
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUR_ADDRESS = "support@commhub.example"
#: The raw FETCH runs at this size and at the hub's; its best run is the limit.
RAW_BATCH = 50
RATIO_TARGET = 0.50
RSS_LIMIT_MB = 300.0
GROWTH_LIMIT_MB = 100.0
SEED = 20240601

FIRST = (
    "anna", "ben", "chloe", "david", "emma", "felix", "greta", "hans", "ines", "jonas",
    "karin", "lars", "mia", "noah", "olga", "paul", "rosa", "sven", "tina", "uwe",
)  # fmt: skip
LAST = ("miller", "schmidt", "dubois", "rossi", "novak", "garcia", "smith", "weber", "berg")
DOMAINS = ("example.org", "example.com", "example.net", "mail.example.de", "corp.example")
WORDS = (
    "order invoice delivery parcel refund account password appointment tomorrow "
    "please thanks question problem error screen payment bank transfer address change "
    "number customer service support ticket update status shipped arrived broken "
    "replace return label warranty repair technician monday friday morning afternoon"
).split()
SUBJECTS = (
    "Question about my order", "Invoice {n}", "Delivery problem", "Appointment",
    "Password reset does not work", "Refund for order {n}", "Change of address",
    "Broken item", "Warranty claim {n}", "Thank you!",
)  # fmt: skip
LATIN = "Grüße aus Köln, Bestellung für Müller, Straße"


def say(line: str = "") -> None:
    """Print a line at once (progress must show while building)."""
    print(line, flush=True)


# -- the mailbox ------------------------------------------------------------------------


class Mailbox:
    """Deterministic varied messages (bytes with LF line ends, as Maildir holds them)."""

    def __init__(self, count: int, seed: int = SEED) -> None:
        self.count = count
        self.rnd = random.Random(seed)
        self.senders = [
            f"{self.rnd.choice(FIRST)}.{self.rnd.choice(LAST)}{i}@{self.rnd.choice(DOMAINS)}"
            for i in range(2000)
        ]
        self.history: dict[str, list[tuple[str, list[str], str]]] = {}
        self.ours: list[tuple[str, str]] = []  # (message id, customer) we "sent"
        self.start = datetime.now(UTC) - timedelta(days=20)
        self.kinds: dict[str, int] = {}

    def _text(self, low: int, high: int) -> str:
        words = [self.rnd.choice(WORDS) for _ in range(self.rnd.randint(low, high))]
        lines, line = [], []
        for word in words:
            line.append(word)
            if len(line) >= 12:
                lines.append(" ".join(line))
                line = []
        lines.append(" ".join(line))
        return "\n".join(lines)

    def _headers(self, n: int, frm: str, to: str, subject: str, mid: str, when: datetime) -> str:
        return (
            f"Return-Path: <{frm.split('<')[-1].rstrip('>')}>\n"
            f"Received: from mx.{frm.rsplit('@', 1)[-1].rstrip('>')} (mx [203.0.113.{n % 250}])\n"
            f"\tby mx.commhub.example (Postfix) with ESMTPS id {n:08X}\n"
            f"\tfor <{OUR_ADDRESS}>; {email.utils.format_datetime(when)}\n"
            f"From: {frm}\nTo: {to}\nSubject: {subject}\n"
            f"Date: {email.utils.format_datetime(when)}\nMessage-ID: {mid}\n"
            "MIME-Version: 1.0\n"
        )

    def message(self, n: int) -> tuple[bytes, datetime]:
        """Message ``n`` and its date."""
        rnd = self.rnd
        when = self.start + timedelta(seconds=n * (20 * 86400 / max(self.count, 1)))
        sender = rnd.choice(self.senders)
        name = sender.split("@")[0].replace(".", " ").title()
        frm = f"{name} <{sender}>"
        mid = f"<{n}.{rnd.getrandbits(40):x}@{sender.rsplit('@', 1)[1]}>"
        subject = rnd.choice(SUBJECTS).format(n=n)
        roll = rnd.random()
        extra = ""
        if roll < 0.01 and self.ours:
            kind = "dsn"
            original, customer = rnd.choice(self.ours)
            raw = self._dsn(n, when, original, customer)
            self._count(kind)
            return raw, when
        if roll < 0.02:
            kind, extra = "auto-reply", "Auto-Submitted: auto-replied\nX-Autoreply: yes\n"
            subject = f"Automatic reply: {subject}"
        elif roll < 0.07:
            kind = "ours"
            customer = rnd.choice(self.senders)
            frm, sender = f"Support <{OUR_ADDRESS}>", customer
            mid = f"<{n}.{rnd.getrandbits(40):x}@commhub.example>"
            self.ours.append((mid, customer))
        elif roll < 0.25 and self.history.get(sender):
            kind = "reply"
            parent, refs, parent_subject = rnd.choice(self.history[sender])
            refs = [*refs[-8:], parent]
            subject = parent_subject if parent_subject.startswith("Re:") else f"Re: {subject}"
            extra = f"In-Reply-To: {parent}\nReferences: {' '.join(refs)}\n"
        else:
            kind = "new"
        self.history.setdefault(sender, []).append((mid, [], subject))
        to = (
            f"Customer <{sender}>" if kind == "ours" else f"Support <{OUR_ADDRESS}>"
        )  # fmt: skip
        head = self._headers(n, frm, to, subject, mid, when) + extra
        shape = rnd.random()
        if shape < 0.08:
            kind += "+attachment"
            body = self._with_attachment(n)
        elif shape < 0.13:
            kind += "+latin1"
            head = head.replace(
                f"Subject: {subject}", f"Subject: =?iso-8859-1?Q?{_qp_word(LATIN)}?= {subject}"
            )
            body = (
                'Content-Type: text/plain; charset="iso-8859-1"\n'
                "Content-Transfer-Encoding: quoted-printable\n\n"
                + _qp(f"{LATIN}\n{self._text(20, 200)}")
                + "\n"
            )
        elif shape < 0.45:
            kind += "+html"
            text = self._text(30, 400)
            html = "".join(f"<p>{line}</p>" for line in text.split("\n"))
            body = (
                'Content-Type: multipart/alternative; boundary="alt-b"\n\n'
                '--alt-b\nContent-Type: text/plain; charset="utf-8"\n\n'
                f"{text}\n"
                '--alt-b\nContent-Type: text/html; charset="utf-8"\n\n'
                f"<html><body>{html}</body></html>\n--alt-b--\n"
            )
        else:
            body = 'Content-Type: text/plain; charset="utf-8"\n\n' + self._text(10, 600) + "\n"
        self._count(kind)
        return (head + body).encode("utf-8"), when

    def _count(self, kind: str) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def _with_attachment(self, n: int) -> str:
        rnd = self.rnd
        size = rnd.randint(2_000, 60_000)
        name, ctype = rnd.choice(
            (("scan.pdf", "application/pdf"), ("photo.png", "image/png"), ("log.txt", "text/plain"))
        )
        payload = base64.encodebytes(rnd.randbytes(size)).decode("ascii")
        return (
            'Content-Type: multipart/mixed; boundary="mix-b"\n\n'
            '--mix-b\nContent-Type: text/plain; charset="utf-8"\n\n'
            f"{self._text(10, 100)}\n"
            f'--mix-b\nContent-Type: {ctype}; name="{n}-{name}"\n'
            f'Content-Disposition: attachment; filename="{n}-{name}"\n'
            f"Content-Transfer-Encoding: base64\n\n{payload}--mix-b--\n"
        )

    def _dsn(self, n: int, when: datetime, original: str, customer: str) -> bytes:
        status = self.rnd.choice(("5.1.1", "5.1.1", "4.2.2"))
        action = "failed" if status.startswith("5") else "delayed"
        return (
            "Return-Path: <>\n"
            "From: MAILER-DAEMON@mx.commhub.example (Mail Delivery System)\n"
            f"To: {OUR_ADDRESS}\nSubject: Undelivered Mail Returned to Sender\n"
            f"Date: {email.utils.format_datetime(when)}\n"
            f"Message-ID: <dsn-{n}@mx.commhub.example>\nAuto-Submitted: auto-replied\n"
            "MIME-Version: 1.0\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="r"\n\n'
            "--r\nContent-Type: text/plain\n\nYour message could not be delivered.\n\n"
            "--r\nContent-Type: message/delivery-status\n\n"
            "Reporting-MTA: dns; mx.commhub.example\n\n"
            f"Final-Recipient: rfc822; {customer}\nAction: {action}\nStatus: {status}\n\n"
            "--r\nContent-Type: text/rfc822-headers\n\n"
            f"From: {OUR_ADDRESS}\nTo: {customer}\nMessage-ID: {original}\n\n--r--\n"
        ).encode()


def _qp(text: str) -> str:
    import quopri

    return quopri.encodestring(text.encode("iso-8859-1")).decode("ascii")


def _qp_word(text: str) -> str:
    return "".join(
        c if c.isalnum() and c.isascii() else "_" if c == " " else f"={b:02X}"
        for c in text
        for b in c.encode("iso-8859-1")
    )


def fill_maildir(maildir: Path, count: int, uid: int, gid: int) -> tuple[int, dict[str, int]]:
    """Write ``count`` messages into ``maildir/cur``; returns total bytes and the mix."""
    box = Mailbox(count)
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    total = 0
    for n in range(count):
        raw, when = box.message(n)
        stamp = int(when.timestamp())
        path = maildir / "cur" / f"{stamp}.M{n}P1.bench,S={len(raw)}:2,S"
        path.write_bytes(raw)
        os.utime(path, (stamp, stamp))
        total += len(raw)
    for folder, _, files in os.walk(maildir.parent):
        os.chown(folder, uid, gid)
        for name in files:
            os.chown(os.path.join(folder, name), uid, gid)
    return total, box.kinds


# -- the phases (each in a process of its own) ------------------------------------------


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _fetch_batch() -> int:
    """The hub's FETCH size (messages per UID FETCH), so the limit fetches alike."""
    from channels.email import mailsync

    return int(getattr(mailsync, "FETCH_BATCH", 50))


async def phase_fetch(args: argparse.Namespace) -> dict[str, Any]:
    """The limit: aioimaplib alone fetching every message, the hub's FETCH size."""
    import aioimaplib  # type: ignore[import-untyped]

    before = _current_mb()
    cpu = _cpu(resource.RUSAGE_SELF)
    started = time.perf_counter()
    imap = aioimaplib.IMAP4(host="127.0.0.1", port=args.port, timeout=120)
    await imap.wait_hello_from_server()
    await imap.login(args.user, args.password)
    await imap.select("INBOX")
    found = await imap.uid_search("ALL", charset=None)
    uids = sorted(int(t) for line in found.lines[:-1] for t in bytes(line).split() if t.isdigit())
    count = size = 0
    for start in range(0, len(uids), args.batch):
        chunk = uids[start : start + args.batch]
        response = await imap.uid("fetch", f"{chunk[0]}:{chunk[-1]}", "(UID BODY.PEEK[])")
        assert response.result == "OK", response
        for line in response.lines:
            if isinstance(line, bytearray):
                count += 1
                size += len(line)
    await imap.logout()
    seconds = time.perf_counter() - started
    return {
        "messages": count,
        "bytes": size,
        "seconds": seconds,
        "cpu": _cpu(resource.RUSAGE_SELF) - cpu,
        "rss_before_mb": before,
    }


class Meter:
    """Seconds spent in named parts of the hub, by wrapping (not changing) its functions."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.spent[name] = self.spent.get(name, 0.0) + seconds

    def wrap(self, name: str, func: Any) -> Any:
        async def timed(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return await func(*a, **kw)
            finally:
                self.add(name, time.perf_counter() - t)

        return timed


def _statement_key(sql: str) -> str:
    verb = sql.split(None, 1)[0].upper()
    if verb in ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"):
        return verb
    table = re.search(r'\b(?:FROM|INTO|UPDATE)\s+"?(\w+)', sql, re.IGNORECASE)
    return f"{verb} {table.group(1) if table else '?'}"


#: The hub's steps of a batch, timed by wrapping these MailIngest methods (wall time on
#: the event loop; what is left of the sync is waiting for IMAP).
STEPS = {
    "parse": "parse_batch",
    "threading": "decide_threads",
    "store": "store_batch",
}


async def phase_sync(args: argparse.Namespace) -> dict[str, Any]:
    """The hub: MailIngest.sync_once into an empty SQLite database."""
    import sqlalchemy as sa

    import hub.email_ingest as email_ingest
    from channels.email.imap import ImapConfig
    from config import Settings
    from hub.services import Services
    from timeline.migrate import upgrade
    from timeline.schema import events

    meter = Meter()

    class Timed(email_ingest.MailIngest):
        pass

    for label, name in STEPS.items():
        if hasattr(Timed, name):
            setattr(Timed, name, meter.wrap(label, getattr(email_ingest.MailIngest, name)))
    Timed.handle = meter.wrap("handle", email_ingest.MailIngest.handle)  # type: ignore[method-assign]
    # Inside the steps (reported as "of which"): the thread-key statements.
    from timeline import mailstore

    for name in ("known_threads", "remember_threads", "rename_thread"):
        setattr(mailstore, name, meter.wrap(f"of which {name}", getattr(mailstore, name)))

    workdir = Path(args.workdir)
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{workdir}/hub.db",
        data_dir=str(workdir / "files"),
        secret_key="x" * 40,
        imap_host="127.0.0.1",
        imap_port=args.port,
        imap_username=args.user,
        imap_password=args.password,
        imap_security="none",
        smtp_from=OUR_ADDRESS,
    )
    services = Services.build(settings)
    await upgrade(services.db)
    statements: dict[str, int] = {}

    def count_statement(conn: Any, cursor: Any, sql: str, *rest: Any) -> None:
        key = _statement_key(sql)
        statements[key] = statements.get(key, 0) + 1

    ingest = Timed(services)
    config = dataclasses.replace(ImapConfig.from_settings(settings), timeout=120.0)
    engine = services.db.engine.sync_engine
    before = _current_mb()
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    sa.event.listen(engine, "before_cursor_execute", count_statement)
    cpu_self, cpu_children = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    results = await ingest.sync_once(config)
    seconds = time.perf_counter() - started
    cpu_self = _cpu(resource.RUSAGE_SELF) - cpu_self
    cpu_children = _cpu(resource.RUSAGE_CHILDREN) - cpu_children
    sa.event.remove(engine, "before_cursor_execute", count_statement)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(str(workdir / "sync.prof"))
    async with services.db.read() as conn:
        stored, distinct = (
            await conn.execute(
                sa.select(sa.func.count(), sa.func.count(sa.distinct(events.c.external_id))).where(
                    events.c.channel == "email"
                )
            )
        ).one()
    await services.close()
    spent = dict(meter.spent)
    handle = spent.pop("handle", 0.0)
    inner = {k: spent.pop(k) for k in list(spent) if k.startswith("of which")}
    return {
        "messages": sum(r.fetched for r in results),
        "stored": int(stored),
        "distinct": int(distinct),
        "created": ingest.stored,
        "seconds": seconds,
        "cpu": cpu_self,
        "cpu_children": cpu_children,
        "rss_before_mb": before,
        "statements": dict(sorted(statements.items(), key=lambda i: -i[1])),
        "split": {
            "waiting for IMAP": seconds - handle,
            **spent,
            "rest (commit, publish, ...)": handle - sum(spent.values()),
            **inner,
        },
    }


async def phase_parse(args: argparse.Namespace) -> dict[str, Any]:
    """The CPU ceiling of parsing: the Maildir's files through the parsers, no I/O."""
    from email import policy
    from email.parser import BytesParser

    from channels.email.parse import parse_message

    raws = [p.read_bytes() for p in sorted(Path(args.workdir).glob("cur/*"))]  # noqa: ASYNC240
    out: dict[str, Any] = {"messages": len(raws)}

    def ours(raw: bytes) -> Any:
        return parse_message(raw, our_addresses=[OUR_ADDRESS])

    for name, func in (
        ("BytesParser(policy=compat32)", BytesParser(policy=policy.compat32).parsebytes),
        ("BytesParser(policy=default)", BytesParser(policy=policy.default).parsebytes),
        ("parse_message", ours),
    ):
        started = time.perf_counter()
        for raw in raws:
            func(raw)
        out[name] = time.perf_counter() - started
    out["seconds"] = out["parse_message"]
    return out


def run_phase(args: argparse.Namespace) -> int:
    runner = {"fetch": phase_fetch, "sync": phase_sync, "parse": phase_parse}[args.phase]
    result = asyncio.run(runner(args))
    result["peak_rss_mb"] = _peak_mb()
    print(json.dumps(result))
    return 0


def spawn(phase: str, port: int, user: str, password: str, **extra: Any) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "bench.email_bench",
        "--phase",
        phase,
        "--port",
        str(port),
        "--user",
        user,
        "--password",
        password,
    ]
    for key, value in extra.items():
        if value is True:
            cmd.append(f"--{key}")
        elif value not in (None, False):
            cmd += [f"--{key}", str(value)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"phase {phase} failed:\n{done.stdout}\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- main -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Verdict:
    name: str
    figure: str
    limit: str
    ok: bool

    def line(self) -> str:
        mark = "PASS" if self.ok else "MISS"
        return f"  {mark}  {self.name}: {self.figure}  (limit: {self.limit})"


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    dovecot = subprocess.run(
        ["/usr/sbin/dovecot", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    versions = ", ".join(
        f"{n} {metadata.version(n)}" for n in ("aioimaplib", "sqlalchemy", "aiosqlite")
    )
    return (
        f"{os.cpu_count()} x {cpu}, {platform.python_implementation()} "
        f"{platform.python_version()}, Dovecot {dovecot}, {versions}"
    )


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="commhub-email-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def rate(result: dict[str, Any]) -> float:
    return float(result["messages"]) / float(result["seconds"])


def main_run(args: argparse.Namespace) -> int:
    from tests.peers.dovecot import _mail_owner, run_dovecot

    count = 2_000 if args.quick and args.messages is None else (args.messages or 20_000)
    batch = _fetch_batch()
    say(f"email bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {count:,} messages")
    say(f"  machine: {machine()}")
    say(f"  load average (1, 5, 15 min) before the run: {_load()}")
    uid, gid, _, _ = _mail_owner()
    with run_dovecot() as server, _workdir() as work:
        peer = server.add_user()
        maildir = server.root / "mail" / peer.user / "Maildir"
        t = time.perf_counter()
        total, kinds = fill_maildir(maildir, count, uid, gid)
        say(
            f"  wrote {count:,} messages ({total / 2**20:.1f} MB) into the Maildir in "
            f"{time.perf_counter() - t:.1f} s"
        )
        mix = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda i: -i[1]))
        say(f"  mix: {mix}")
        t = time.perf_counter()
        with peer.imap() as conn:
            typ, data = conn.select("INBOX")
            assert typ == "OK" and int(data[0] or 0) == count, (typ, data)
        say(f"  Dovecot indexed them (first SELECT) in {time.perf_counter() - t:.1f} s")

        login = (peer.port, peer.user, peer.password)
        raws: list[tuple[str, dict[str, Any]]] = []
        for size in sorted({RAW_BATCH, batch}):
            say(f"  raw aioimaplib FETCH, {size} per UID FETCH, run 1 ...")
            raws.append((f"{size} per FETCH, run 1", spawn("fetch", *login, batch=size)))
        say("  hub MailIngest.sync_once into empty SQLite ...")
        hub_work = work / "sync"
        hub_work.mkdir()
        synced = spawn("sync", *login, workdir=hub_work)
        for size in sorted({RAW_BATCH, batch}):
            say(f"  raw aioimaplib FETCH, {size} per UID FETCH, run 2 ...")
            raws.append((f"{size} per FETCH, run 2", spawn("fetch", *login, batch=size)))
        say("  parsers alone on the Maildir's files (no I/O) ...")
        parsed = spawn("parse", *login, workdir=maildir)
        profile = None
        if args.profile:
            say("  the hub again under cProfile (not judged) ...")
            prof_work = work / "profile"
            prof_work.mkdir()
            profiled = spawn("sync", *login, workdir=prof_work, profile=True)
            profile = (profiled["seconds"], _profile_report(prof_work / "sync.prof"))
    say(f"  load average after the run: {_load()}")

    limit = max((r for _, r in raws), key=rate)
    per = synced["messages"] or 1
    say()
    say("results")
    for label, result in raws:
        say(
            f"  info  raw FETCH {label}: {result['messages']:,} messages "
            f"({result['bytes'] / 2**20:.1f} MB) in {result['seconds']:.2f} s = "
            f"{rate(result):,.0f} msg/s, CPU {result['cpu'] / result['messages'] * 1e3:.3f} "
            f"ms/msg, peak RSS {result['peak_rss_mb']:.0f} MB"
        )
    say(
        f"  info  hub sync: {synced['messages']:,} fetched, {synced['created']:,} stored in "
        f"{synced['seconds']:.2f} s = {rate(synced):,.0f} msg/s, peak RSS "
        f"{synced['peak_rss_mb']:.0f} MB (before the sync {synced['rss_before_mb']:.0f} MB)"
    )
    say(
        f"  info  hub CPU per message: {synced['cpu'] / per * 1e3:.3f} ms in the hub's process"
        f" (event loop and SQLite thread), {synced['cpu_children'] / per * 1e3:.3f} ms in"
        f" parse processes; raw FETCH {limit['cpu'] / limit['messages'] * 1e3:.3f} ms"
    )
    split = synced["split"]
    say(
        "  info  hub wall time split (event loop): "
        + ", ".join(
            f"{k} {v:.1f} s ({v / synced['seconds']:.0%}, {v / per * 1e3:.2f} ms/msg)"
            for k, v in split.items()
            if v > 0
        )
    )
    say(
        f"  info  hub SQL statements: {sum(synced['statements'].values()) / per:.2f} per message ("
        + ", ".join(f"{k} {v / per:.3f}" for k, v in list(synced["statements"].items())[:8])
        + ")"
    )
    say(
        "  info  parsers alone (one core, no I/O): "
        + ", ".join(
            f"{name} {parsed['messages'] / parsed[name]:,.0f} msg/s"
            for name in (
                "BytesParser(policy=compat32)",
                "BytesParser(policy=default)",
                "parse_message",
            )
        )
    )
    ratio = rate(synced) / rate(limit)
    growth = synced["peak_rss_mb"] - synced["rss_before_mb"]
    verdicts = [
        Verdict(
            "every message stored exactly once",
            f"{synced['stored']:,} events, {synced['distinct']:,} distinct Message-IDs",
            f"{count:,}",
            synced["stored"] == synced["distinct"] == count,
        ),
        Verdict(
            "hub sync rate",
            f"{rate(synced):,.0f} msg/s = {ratio:.1%} of the raw FETCH {rate(limit):,.0f} msg/s",
            f">= {RATIO_TARGET:.0%}",
            ratio >= RATIO_TARGET,
        ),
        Verdict(
            "hub peak RSS",
            f"{synced['peak_rss_mb']:.0f} MB (raw FETCH: {limit['peak_rss_mb']:.0f} MB)",
            f"<= {RSS_LIMIT_MB:.0f} MB",
            synced["peak_rss_mb"] <= RSS_LIMIT_MB,
        ),
        Verdict(
            "hub RSS growth during the sync",
            f"{growth:.0f} MB",
            f"<= {GROWTH_LIMIT_MB:.0f} MB",
            growth <= GROWTH_LIMIT_MB,
        ),
    ]
    say()
    for verdict in verdicts:
        say(verdict.line())
    if profile is not None:
        say()
        say(f"profile of the hub's sync (cProfile, {profile[0]:.1f} s under the profiler)")
        say(profile[1])
    return 0 if all(v.ok for v in verdicts) else 1


def _profile_report(path: Path) -> str:
    import io
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs()
    out.write("top by tottime:\n")
    stats.sort_stats("tottime").print_stats(20)
    out.write("top by cumtime:\n")
    stats.sort_stats("cumtime").print_stats(40)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.email_bench", description=__doc__)
    parser.add_argument("--messages", type=int, default=None, help="default 20,000")
    parser.add_argument("--quick", action="store_true", help="2,000 messages")
    parser.add_argument("--profile", action="store_true", help="add a cProfile run of the sync")
    parser.add_argument("--phase", choices=["fetch", "sync", "parse"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--user", help=argparse.SUPPRESS)
    parser.add_argument("--password", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=50, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        return run_phase(args)
    return main_run(args)


if __name__ == "__main__":
    sys.exit(main())
