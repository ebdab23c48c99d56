"""Real peers for the tests: pytest fixtures that start throwaway servers on loopback.

Each module starts one kind of server on 127.0.0.1, a free port and a temporary folder,
and stops it afterwards (PEERS.md). A peer the machine lacks skips its tests with the
reason, except under ``CI=true``, where a missing peer fails them: CI must install it.
Import the fixtures into a ``conftest.py`` to use them::

    from tests.peers.dovecot import dovecot  # noqa: F401
"""

from __future__ import annotations

import os
import socket

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def missing_peer(reason: str) -> None:
    """Skip the test for a peer this machine lacks; under ``CI=true`` fail it instead."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: CI must install it)", pytrace=False)
    pytest.skip(reason)
