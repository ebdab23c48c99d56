"""A throwaway Dovecot IMAP server (Debian ``dovecot-imapd``) for the tests.

Started as PEERS.md describes: a generated ``dovecot.conf`` in a ``tempfile.mkdtemp()``
folder opened to 0755 (pytest's ``tmp_path`` is 0700 under root and Dovecot's unprivileged
processes could not enter it), a ``passwd-file`` passdb, a static userdb owned by an
unprivileged uid, ``auth_failure_delay = 0``, plain-text login without TLS, and one
``inet_listener`` on a free loopback port. ``dovecot -F`` keeps it in the foreground so the
fixture owns the process and ends it by its pid.

One instance serves the whole session (``dovecot_server``: it starts in ~0.15 s but takes
~1 s to stop); isolation comes from accounts: the ``dovecot`` fixture gives each test an
account nobody used, with an empty INBOX and a ``\\Sent`` folder, as a
:class:`DovecotPeer`: where to connect, and helpers that act from outside the code under
test (stdlib ``imaplib``, ``doveadm``) to APPEND messages, create folders, change a
folder's UIDVALIDITY and drop the account's connections.
"""

from __future__ import annotations

import contextlib
import dataclasses
import imaplib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import free_port, missing_peer

DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
USERS = 500
PASSWORD = "secret-pw"

_CONF = """\
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
instance_name = commhub-test-{port}
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
ssl = no
stats_writer_socket_path =
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
mail_location = maildir:{root}/mail/%u/Maildir
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
last_valid_gid = {gid}
default_internal_user = {internal_user}
default_login_user = {login_user}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Sent {{
    special_use = \\Sent
    auto = subscribe
  }}
  mailbox Drafts {{
    special_use = \\Drafts
  }}
}}
"""


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclasses.dataclass
class DovecotPeer:
    """A running Dovecot: where to log in, and helpers that act as another mail client."""

    host: str
    port: int
    user: str
    password: str
    root: Path

    @contextlib.contextmanager
    def imap(self) -> Iterator[imaplib.IMAP4]:
        """A logged-in stdlib IMAP connection, logged out afterwards."""
        conn = imaplib.IMAP4(self.host, self.port, timeout=10)
        try:
            conn.login(self.user, self.password)
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.logout()

    def append(self, *messages: bytes, folder: str = "INBOX") -> None:
        """APPEND raw messages to ``folder`` (as a delivery or another client would).

        Folder names here are as on the wire (modified UTF-7, ``Entw&APw-rfe``); they are
        quoted, which the stdlib's imaplib does not do.
        """
        with self.imap() as conn:
            for raw in messages:
                typ, data = conn.append(_quote(folder), "", None, raw)
                if typ != "OK":
                    raise RuntimeError(f"APPEND to {folder} failed: {data!r}")

    def create_folder(self, folder: str) -> None:
        """CREATE a folder."""
        with self.imap() as conn:
            typ, data = conn.create(_quote(folder))
            if typ != "OK":
                raise RuntimeError(f"CREATE {folder} failed: {data!r}")

    def uidvalidity(self, folder: str = "INBOX") -> int:
        """The folder's UIDVALIDITY, by STATUS."""
        with self.imap() as conn:
            typ, data = conn.status(_quote(folder), "(UIDVALIDITY)")
            found = re.search(rb"UIDVALIDITY (\d+)", data[0] or b"") if typ == "OK" else None
            if found is None:
                raise RuntimeError(f"STATUS {folder} failed: {data!r}")
            return int(found.group(1))

    def change_uidvalidity(self, folder: str = "INBOX") -> int:
        """Give ``folder`` a new UIDVALIDITY (``doveadm mailbox update``); returns it.

        Like a server restore or a mailbox rebuilt by the provider: every UID the client
        remembers is void from now on (RFC 4549 4.1), although the messages are the same.
        """
        new = self.uidvalidity(folder) + 1
        subprocess.run(
            [
                DOVEADM,
                "-c",
                str(self.root / "dovecot.conf"),
                "mailbox",
                "update",
                "-u",
                self.user,
                "--uid-validity",
                str(new),
                folder,
            ],
            check=True,
            capture_output=True,
            timeout=10,
        )
        return new

    def kick(self) -> None:
        """Drop every connection of this user (``doveadm kick``), as a restart would."""
        subprocess.run(
            [DOVEADM, "-c", str(self.root / "dovecot.conf"), "kick", self.user],
            check=True,
            capture_output=True,
            timeout=10,
        )

    def log(self) -> str:
        """Dovecot's log so far (for failure messages)."""
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _mail_owner() -> tuple[int, int, str, str]:
    """uid, gid of the mail files and the internal and login users Dovecot runs as."""
    if os.geteuid() == 0:
        # Root may not own mail; Debian's package provides dovecot and dovenull.
        nobody = pwd.getpwnam("nobody")
        return nobody.pw_uid, nobody.pw_gid, "dovecot", "dovenull"
    me = pwd.getpwuid(os.geteuid())
    return me.pw_uid, me.pw_gid, me.pw_name, me.pw_name


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dovecot exited with status {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"dovecot did not listen on port {port} within {timeout} s")


@dataclasses.dataclass
class DovecotServer:
    """A running Dovecot instance; each test logs in as a user of its own."""

    root: Path
    port: int
    host: str = "127.0.0.1"
    _users: int = 0

    def add_user(self) -> DovecotPeer:
        """An account nobody has used yet, with an empty mailbox.

        The accounts are written before start: Dovecot notices a changed passwd-file by
        its mtime, in whole seconds, so a user added within the same second is unknown.
        """
        if self._users >= USERS:
            raise RuntimeError(f"all {USERS} test accounts are used")
        self._users += 1
        return DovecotPeer(self.host, self.port, f"agent{self._users}", PASSWORD, self.root)

    def log(self) -> str:
        """Dovecot's log so far (for failure messages)."""
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def run_dovecot() -> Iterator[DovecotServer]:
    """Start a throwaway Dovecot, yield it, stop it (~1 s) and remove its folder."""
    root = Path(tempfile.mkdtemp(prefix="commhub-dovecot-"))
    root.chmod(0o755)
    proc: subprocess.Popen[bytes] | None = None
    try:
        uid, gid, internal_user, login_user = _mail_owner()
        port = free_port()
        for sub in ("run", "state", "mail"):
            (root / sub).mkdir()
        os.chown(root / "mail", uid, gid)
        (root / "passwd").write_text(
            "".join(f"agent{n}:{{PLAIN}}{PASSWORD}::::::\n" for n in range(1, USERS + 1))
        )
        (root / "passwd").chmod(0o644)
        (root / "dovecot.conf").write_text(
            _CONF.format(
                root=root,
                port=port,
                uid=uid,
                gid=gid,
                internal_user=internal_user,
                login_user=login_user,
            )
        )
        with (root / "stderr.log").open("wb") as stderr:
            proc = subprocess.Popen(
                [DOVECOT, "-F", "-c", str(root / "dovecot.conf")],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        server = DovecotServer(root, port)
        try:
            _wait_listening(port, proc)
        except RuntimeError as exc:
            output = (root / "stderr.log").read_text(errors="replace")
            raise RuntimeError(f"{exc}\n{output}\n{server.log()}") from None
        yield server
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def dovecot_server() -> Iterator[DovecotServer]:
    """One Dovecot for the session; skipped if it is missing, a failure under ``CI=true``."""
    if not (os.path.exists(DOVECOT) and os.path.exists(DOVEADM)):
        missing_peer(f"{DOVECOT} is missing: apt-get install --no-install-recommends dovecot-imapd")
    with run_dovecot() as server:
        yield server


@pytest.fixture
def dovecot(dovecot_server: DovecotServer) -> DovecotPeer:
    """A Dovecot account of this test's own, with an empty INBOX and a \\Sent folder."""
    return dovecot_server.add_user()
