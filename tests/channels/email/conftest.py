"""Fixtures of the email tests: the recorded corpus and the real peers (tests/peers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.peers.dovecot import dovecot, dovecot_server  # noqa: F401
from tests.peers.smtp import smtp_cert, smtp_server  # noqa: F401

FIXTURES = Path(__file__).resolve().parents[3] / "channels" / "email" / "fixtures"
OURS = ("support@commhub.test", "@commhub.test")


def fixture_bytes(name: str) -> bytes:
    """The raw bytes of one corpus message."""
    return (FIXTURES / name).read_bytes()


@pytest.fixture
def corpus() -> dict[str, bytes]:
    """Every corpus message by file name."""
    return {p.name: p.read_bytes() for p in sorted(FIXTURES.glob("*.eml"))}
