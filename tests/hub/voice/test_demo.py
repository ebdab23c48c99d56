"""The demo's telephony: calls ring its agents' browser clients, its history has calls."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import sqlalchemy as sa

from config import load as load_config
from hub.demo import AGENT_PHONE, VOICE_CLIENTS, seed
from hub.voice_state import routing
from tests.hub.test_cli import RUN, clean_env
from timeline import migrate
from timeline.db import Database
from timeline.files import FileStore
from timeline.schema import agents, events


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_the_demo_seed_has_calls_and_the_agents_phone(
    database_url: str, tmp_path: Path
) -> None:
    db = Database.from_url(database_url)
    try:
        await migrate.upgrade(db)
        await seed(db, FileStore(tmp_path / "files"), customers=12)
        async with db.read() as conn:
            phones = dict((await conn.execute(sa.select(agents.c.email, agents.c.phone))).all())
            calls = list(
                (
                    await conn.execute(sa.select(events.c.data).where(events.c.channel == "voice"))
                ).scalars()
            )
    finally:
        await db.dispose()
    assert phones["agent@demo.example"] == AGENT_PHONE
    assert calls, "the demo's history has calls"
    answered = [c for c in calls if not c["missed"]]
    assert all(c["answered_by"].removeprefix("client:") in VOICE_CLIENTS for c in answered)


def test_the_demos_calls_ring_its_agents_clients(tmp_path: Path) -> None:
    # `run.py demo` writes its settings to hub.toml before it serves: read them there.
    port = free_port()
    args = [sys.executable, str(RUN), "demo", "--dir", str(tmp_path / "demo"), "--port", str(port)]
    config_file = tmp_path / "demo" / "hub.toml"
    proc = subprocess.Popen(args, env=clean_env(), stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (config_file.exists() and config_file.read_text().endswith("\n")):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        written = tomllib.loads(config_file.read_text())
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert written["TWILIO_VOICE_CLIENTS"] == list(VOICE_CLIENTS)
    settings = load_config({"HUB_CONFIG": str(config_file)})
    assert routing(settings).clients == VOICE_CLIENTS
