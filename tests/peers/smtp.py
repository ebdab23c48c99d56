"""A real SMTP server for the tests: aiosmtpd's ``Controller`` on a free loopback port.

``smtp_server(security=..., auth=...)`` (a factory fixture) starts one per call and stops
them all after the test (PEERS.md: start 4 ms, a send 11 ms). ``security`` is ``none``,
``starttls`` (STARTTLS required before MAIL and AUTH) or ``tls`` (implicit TLS); the
certificate is self-signed for ``IP:127.0.0.1``, made once per session by ``openssl``,
and the peer hands out an ``ssl.SSLContext`` that trusts it. With ``auth=True`` the server
offers AUTH PLAIN/LOGIN and accepts only the peer's username and password.

The handler records every message it accepts and can be told to answer the next RCPT or
DATA with a given reply (``fail_next("data", "451 4.3.0 Try again later")``) to exercise
transient and permanent failures, or to answer DATA late (``hang_next_data``) so the
client gives up waiting although the message is accepted.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import shutil
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.peers import free_port, missing_peer

Stage = Literal["rcpt", "data"]


@dataclasses.dataclass(frozen=True)
class Received:
    """One message the server accepted."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    tls: bool
    authenticated: bool


class RecordingHandler:
    """An aiosmtpd handler that keeps what it receives and fails on request."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._failures: collections.deque[tuple[Stage, str]] = collections.deque()
        self._hang = 0.0

    def fail_next(self, stage: Stage, reply: str, times: int = 1) -> None:
        """Answer the next ``times`` RCPT (per recipient) or DATA commands with ``reply``."""
        with self._lock:
            for _ in range(times):
                self._failures.append((stage, reply))

    def hang_next_data(self, seconds: float) -> None:
        """Take the next message but answer DATA only after ``seconds``: a lost reply."""
        with self._lock:
            self._hang = seconds

    def _take_failure(self, stage: Stage) -> str | None:
        with self._lock:
            if self._failures and self._failures[0][0] == stage:
                return self._failures.popleft()[1]
        return None

    async def handle_RCPT(  # aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        failure = self._take_failure("rcpt")
        if failure is not None:
            return failure
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        failure = self._take_failure("data")
        if failure is not None:
            return failure
        received = Received(
            mail_from=envelope.mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            content=bytes(envelope.original_content or envelope.content),
            # session.ssl is set by STARTTLS; implicit TLS shows on the transport.
            tls=session.ssl is not None
            or server.transport.get_extra_info("sslcontext") is not None,
            authenticated=bool(session.authenticated),
        )
        with self._lock:
            self.messages.append(received)
            queued = len(self.messages)
            hang, self._hang = self._hang, 0.0
        if hang:
            await asyncio.sleep(hang)
        return f"250 2.0.0 Ok: queued as Q{queued}"


@dataclasses.dataclass
class SmtpPeer:
    """A running aiosmtpd: where to connect, how to trust it, and what it received."""

    host: str
    port: int
    security: str
    handler: RecordingHandler
    username: str | None = None
    password: str | None = None
    client_tls_context: ssl.SSLContext | None = None

    @property
    def messages(self) -> list[Received]:
        """Messages accepted so far."""
        return list(self.handler.messages)

    def fail_next(self, stage: Stage, reply: str, times: int = 1) -> None:
        """See :meth:`RecordingHandler.fail_next`."""
        self.handler.fail_next(stage, reply, times)


def _make_cert(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@pytest.fixture(scope="session")
def smtp_cert() -> Iterator[tuple[Path, Path]]:
    """A self-signed certificate and key for 127.0.0.1 (``openssl``), removed afterwards."""
    if shutil.which("openssl") is None:
        missing_peer("openssl is missing: apt-get install openssl")
    folder = Path(tempfile.mkdtemp(prefix="commhub-smtp-cert-"))
    try:
        yield _make_cert(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


StartSmtp = Callable[..., SmtpPeer]


@pytest.fixture
def smtp_server(smtp_cert: tuple[Path, Path]) -> Iterator[StartSmtp]:
    """A factory: ``smtp_server(security="starttls", auth=True)`` starts an aiosmtpd."""
    try:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult
    except ImportError:
        missing_peer("aiosmtpd is missing: pip install aiosmtpd")
        raise
    cert, key = smtp_cert
    controllers: list[Any] = []

    def start(security: str = "none", auth: bool = False) -> SmtpPeer:
        handler = RecordingHandler()
        peer = SmtpPeer("127.0.0.1", free_port(), security, handler)
        kwargs: dict[str, Any] = {}
        if security in ("starttls", "tls"):
            server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_ctx.load_cert_chain(cert, key)
            peer.client_tls_context = ssl.create_default_context(cafile=str(cert))
            if security == "starttls":
                kwargs.update(tls_context=server_ctx, require_starttls=True)
            else:
                kwargs.update(ssl_context=server_ctx)
        elif security != "none":
            raise ValueError(f"unknown security {security!r}")
        if auth:
            peer.username, peer.password = "mailer", "s3cret-pw"

            def authenticator(
                server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
            ) -> Any:
                ok = (
                    getattr(auth_data, "login", None) == peer.username.encode()  # type: ignore[union-attr]
                    and getattr(auth_data, "password", None) == peer.password.encode()  # type: ignore[union-attr]
                )
                return AuthResult(success=ok, handled=False)

            kwargs.update(
                authenticator=authenticator,
                auth_require_tls=security != "none",
                auth_required=True,
            )
        controller = Controller(handler, hostname="127.0.0.1", port=peer.port, **kwargs)
        controller.start()
        controllers.append(controller)
        return peer

    try:
        yield start
    finally:
        for controller in controllers:
            controller.stop()
