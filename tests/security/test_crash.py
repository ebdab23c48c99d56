"""Crash safety as tests (RELIABILITY 30, 31, 34), with real processes and ``kill -9``.

30: a hub (``run.py serve --no-workers`` on SQLite, Twilio configured) receives 1000
signed inbound SMS webhooks, 50 at a time, and is killed with SIGKILL midway. After a
restart, every webhook that was answered 2xx is stored exactly once; Twilio's retries of
the rest (sent again here) are stored once too.

31: a hub with its workers (``run.py serve``) sends a queued SMS to the Twilio sandbox,
served by this test process; the moment the sandbox has accepted the message, before its
answer leaves, the sandbox kills the hub with SIGKILL. After a restart the outbox
recovery and the reconciler of the new process settle the send from Twilio's records:
one message at Twilio, none sent again, the event carries its MessageSid.

34: three writer processes ingest concurrently through ``timeline.ingest`` into one
SQLite file: none fails with "database is locked"; then writers are killed with SIGKILL
again and again, and ``PRAGMA integrity_check`` still answers ``ok``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from channels.twilio.forms import encode_form
from channels.twilio.sandbox import Sandbox, run_sandbox
from channels.twilio.signature import sign
from tests.hub.test_cli import clean_env

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "AC" + "0" * 32
AUTH_TOKEN = "crash-test-auth-token"
OUR_NUMBER = "+14155550199"
TOTAL = 1000
AT_ONCE = 50

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_hub(
    tmp_path: Path, port: int, *, workers: bool = False, **settings: str
) -> subprocess.Popen[bytes]:
    """``run.py serve`` on the test's SQLite file with Twilio configured, plus ``settings``."""
    env = clean_env(
        HUB_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/hub.db",
        HUB_PUBLIC_URL=f"http://127.0.0.1:{port}",
        HUB_SECRET_KEY="k" * 40,
        HUB_DATA_DIR=str(tmp_path / "data"),
        HUB_LOG_LEVEL="WARNING",
        TWILIO_ACCOUNT_SID=ACCOUNT,
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        TWILIO_NUMBERS=OUR_NUMBER,
    )
    env.update(settings)
    serve = ["serve"] if workers else ["serve", "--no-workers"]
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *serve, "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / f"hub-{time.monotonic_ns()}.log", "wb"),
    )


async def _wait_up(client: httpx.AsyncClient, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, "the hub exited"
        try:
            if (await client.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("the hub did not come up")


def _form(i: int) -> list[tuple[str, str]]:
    sid = f"SM{i:032x}"
    return [
        ("AccountSid", ACCOUNT),
        ("MessageSid", sid),
        ("SmsMessageSid", sid),
        ("From", f"+1415555{1000 + i % 25}"),
        ("To", OUR_NUMBER),
        ("Body", f"message {i}"),
        ("NumMedia", "0"),
        ("SmsStatus", "received"),
    ]


async def _send(client: httpx.AsyncClient, base: str, i: int) -> int | None:
    form = _form(i)
    url = f"{base}/webhooks/twilio/sms"
    try:
        response = await client.post(
            "/webhooks/twilio/sms",
            content=encode_form(form),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": sign(AUTH_TOKEN, url, form),
            },
        )
    except httpx.TransportError:
        return None
    return response.status_code


def _stored(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT external_id, count(*) FROM events WHERE channel = 'sms' GROUP BY external_id"
        ).fetchall()
    return {sid: n for sid, n in rows}


async def test_kill_9_during_webhooks_loses_no_acknowledged_message(tmp_path: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    hub = _start_hub(tmp_path, port)
    acknowledged: set[str] = set()
    try:
        limits = httpx.Limits(max_connections=AT_ONCE)
        async with httpx.AsyncClient(base_url=base, timeout=10, limits=limits) as client:
            await _wait_up(client, hub)
            gate = asyncio.Semaphore(AT_ONCE)

            async def one(i: int) -> None:
                async with gate:
                    status = await _send(client, base, i)
                if status is not None and 200 <= status < 300:
                    acknowledged.add(f"SM{i:032x}")
                    if len(acknowledged) == TOTAL // 3:
                        hub.send_signal(signal.SIGKILL)  # mid-flight, many requests open

            await asyncio.gather(*(one(i) for i in range(TOTAL)))
        hub.wait(10)
        assert hub.returncode == -signal.SIGKILL
        assert TOTAL // 3 <= len(acknowledged) < TOTAL

        hub = _start_hub(tmp_path, port)
        async with httpx.AsyncClient(base_url=base, timeout=10, limits=limits) as client:
            await _wait_up(client, hub)
            stored = _stored(tmp_path / "hub.db")
            assert acknowledged <= set(stored), "an acknowledged webhook was lost"
            assert set(stored.values()) == {1}
            # Twilio retries what it got no 2xx for (and some it did): all once each.
            gate = asyncio.Semaphore(AT_ONCE)

            async def again(i: int) -> int | None:
                async with gate:
                    return await _send(client, base, i)

            statuses = await asyncio.gather(*(again(i) for i in range(0, TOTAL)))
            assert set(statuses) == {200}
        stored = _stored(tmp_path / "hub.db")
        assert len(stored) == TOTAL and set(stored.values()) == {1}
    finally:
        if hub.poll() is None:
            hub.terminate()
            hub.wait(10)


CUSTOMER = "+14155550100"
#: No status callback reaches the hub: only reconciliation can settle the send.
EVERY_STATUS = ("queued", "sending", "sent", "delivered", "undelivered", "failed")


def _start_sending_hub(tmp_path: Path, port: int, api_base: str) -> subprocess.Popen[bytes]:
    return _start_hub(
        tmp_path,
        port,
        workers=True,
        HUB_LOG_LEVEL="INFO",
        HUB_OUTBOX_STALE_AFTER="1",
        TWILIO_API_BASE=api_base,
        TWILIO_SMS_RATE="0",
        TWILIO_RECONCILE_EVERY="0.5",
    )


def _add_agent(tmp_path: Path) -> str:
    """``run.py agent add`` on the test's database; its token."""
    added = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "agent",
            "add",
            "ops@example.com",
            "--role",
            "agent",
        ],
        cwd=tmp_path,
        env=clean_env(HUB_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/hub.db"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    token: str = added.stdout.strip().splitlines()[-1]
    return token


def _logs(tmp_path: Path) -> str:
    return "".join(p.read_text() for p in sorted(tmp_path.glob("hub-*.log")))


def _outbox_row(db: Path) -> tuple[str, str | None, str | None, str]:
    """(outbox state, provider id, the event's MessageSid, the event's status) of the send."""
    with sqlite3.connect(db) as conn:
        row: tuple[str, str | None, str | None, str] = conn.execute(
            "SELECT o.state, o.provider_id, e.external_id, e.status "
            "FROM outbox o JOIN events e ON e.id = o.event_id"
        ).fetchone()
    return row


async def test_31_kill_9_between_acceptance_and_record_is_settled_by_reconciliation(
    tmp_path: Path,
) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    token = await asyncio.to_thread(_add_agent, tmp_path)
    sandbox = Sandbox(ACCOUNT, AUTH_TOKEN, base, numbers=[OUR_NUMBER], drop_statuses=EVERY_STATUS)
    accepted: list[str] = []
    async with run_sandbox(sandbox) as api_base:
        hub = _start_sending_hub(tmp_path, port, api_base)

        def kill_the_sender(message: dict[str, object]) -> None:
            accepted.append(str(message["sid"]))
            hub.send_signal(signal.SIGKILL)
            hub.wait(10)  # dead before the answer is written

        sandbox.on_accept = kill_the_sender
        try:
            headers = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(base_url=base, timeout=10, headers=headers) as client:
                await _wait_up(client, hub)
                created = await client.post(
                    "/api/v1/customers", json={"name": "Ada", "phones": [CUSTOMER]}
                )
                assert created.status_code == 201, created.text
                queued = await client.post(
                    "/api/v1/messages",
                    json={
                        "customer_id": created.json()["id"],
                        "channel": "sms",
                        "text": "Your appointment is tomorrow at 10:00",
                    },
                )
                assert queued.status_code == 202, queued.text
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(hub.wait, 30)
            assert hub.returncode == -signal.SIGKILL, "the sandbox never accepted the send"
            sandbox.on_accept = None
            [sid] = accepted
            # Twilio has the message; the hub died holding the claim, knowing nothing.
            assert [m["sid"] for m in sandbox.phone_log(CUSTOMER)] == [sid]
            assert _outbox_row(tmp_path / "hub.db") == ("claimed", None, None, "queued")

            await asyncio.sleep(1.2)  # the claim is now older than HUB_OUTBOX_STALE_AFTER
            hub = _start_sending_hub(tmp_path, port, api_base)
            deadline = time.monotonic() + 30
            while _outbox_row(tmp_path / "hub.db")[0] != "sent":
                assert hub.poll() is None, "the restarted hub exited"
                assert time.monotonic() < deadline, _outbox_row(tmp_path / "hub.db")
                await asyncio.sleep(0.1)
            await sandbox.settle()
            assert _outbox_row(tmp_path / "hub.db") == ("sent", sid, sid, "delivered")
            # More rounds of recovery, sending and reconciliation send nothing again.
            await asyncio.sleep(2)
            assert [m["sid"] for m in sandbox.phone_log(CUSTOMER)] == [sid]
            assert len(sandbox.messages) == 1
        finally:
            if hub.poll() is None:
                hub.terminate()
                hub.wait(10)
    assert "stale claims; marked unknown" in _logs(tmp_path)


def _writers(url: str, round_: int, count: int) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.security.crash_writer",
                url,
                f"w{round_}-{n}",
                str(count),
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]


def test_writer_processes_never_see_a_locked_database_and_survive_kill_9(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/hub.db"
    migrate = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "migrate"],
        cwd=tmp_path,
        env=clean_env(HUB_DATABASE_URL=url),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stderr
    # Concurrent writers to the end: no "database is locked", every event stored once.
    writers = _writers(url, 0, 150)
    for writer in writers:
        _, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
        assert "database is locked" not in err
    assert len(_stored(tmp_path / "hub.db")) == 450
    # kill -9 loops: writers die mid-transaction; the file stays sound.
    rng = random.Random(34)
    for round_ in range(1, 6):
        before = len(_stored(tmp_path / "hub.db"))
        writers = _writers(url, round_, 10_000)
        # Kill once they are writing (however slowly the processes start), mid-stream.
        deadline = time.monotonic() + 120
        while len(_stored(tmp_path / "hub.db")) == before and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.5))
        for writer in writers:
            writer.send_signal(signal.SIGKILL)
        for writer in writers:
            _, err = writer.communicate(timeout=10)
            assert "database is locked" not in err
    with sqlite3.connect(tmp_path / "hub.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        (dupes,) = conn.execute(
            "SELECT count(*) FROM (SELECT external_id FROM events "
            "GROUP BY channel, external_id HAVING count(*) > 1)"
        ).fetchone()
    assert dupes == 0
    assert len(_stored(tmp_path / "hub.db")) > 450  # the killed rounds wrote something
