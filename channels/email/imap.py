"""Reading a mailbox over IMAP (RFC 3501) with aioimaplib: a small typed client.

:class:`ImapClient` connects (``tls``: implicit TLS on 993, RFC 8314; ``none``: plain,
for a local server; aioimaplib has no STARTTLS), logs in, selects a folder (its
UIDVALIDITY and UIDNEXT), finds the Sent folder (RFC 6154 ``\\Sent``, else common
names), searches UIDs above a checkpoint or SINCE a date, fetches raw messages with
``BODY.PEEK[]`` (the \\Seen flags of the agents' mail program stay as they are), and
waits for new mail with IDLE (RFC 2177), or by polling where the server lacks it.
Library errors become :mod:`channels.email.errors`; a lost connection is noticed at once,
also in the middle of IDLE.

The synchronization built on it is in :mod:`channels.email.mailsync`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from datetime import date
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import aioimaplib  # type: ignore[import-untyped]

from channels.email.errors import (
    ImapAuthenticationError,
    ImapCommandError,
    ImapConnectionError,
)

if TYPE_CHECKING:
    from config.settings import Settings

log = logging.getLogger(__name__)

#: Servers may drop a client that idles for 30 minutes (RFC 2177): renew IDLE before.
MAX_IDLE_SECONDS = 25 * 60
SENT_NAMES = (
    "sent", "sent items", "sent messages", "sent mail", "[gmail]/sent mail",
    "gesendet", "gesendete elemente", "gesendete objekte", "envoyés", "éléments envoyés",
    "enviados", "elementos enviados", "posta inviata", "inviati", "verzonden items",
)  # fmt: skip
_LIST_LINE = re.compile(
    rb'^\((?P<flags>[^)]*)\)\s+(?P<delim>"(?:[^"\\]|\\.)*"|NIL)\s+(?P<name>.+)$', re.I
)
_FETCH_START = re.compile(rb"^\d+ FETCH \(", re.I)
_UID = re.compile(rb"\bUID (\d+)", re.I)
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)", re.I)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SECURITY: dict[str, Literal["tls", "none"]] = {"tls": "tls", "none": "none"}
_CONNECTION_ERRORS = (
    OSError,
    ssl.SSLError,
    TimeoutError,
    asyncio.IncompleteReadError,
    aioimaplib.AioImapException,
)


@dataclasses.dataclass(frozen=True, slots=True)
class ImapConfig:
    """Where and how to read mail. ``ssl_context`` overrides the system trust store."""

    host: str
    username: str
    password: str = dataclasses.field(repr=False)
    port: int = 993
    security: Literal["tls", "none"] = "tls"
    timeout: float = 60.0
    ssl_context: ssl.SSLContext | None = None
    #: Use IDLE where offered; off polls instead (for servers whose IDLE misbehaves).
    idle: bool = True

    @classmethod
    def from_settings(
        cls, settings: Settings, *, ssl_context: ssl.SSLContext | None = None
    ) -> ImapConfig:
        """The IMAP settings (``IMAP_HOST``, ``IMAP_PORT``, ``IMAP_SECURITY``, ...)."""
        if not (settings.imap_host and settings.imap_username and settings.imap_password):
            raise ValueError("IMAP_HOST, IMAP_USERNAME and IMAP_PASSWORD must be set")
        security = _SECURITY.get(settings.imap_security)
        if security is None:
            raise ValueError(f"IMAP_SECURITY must be tls or none, not {settings.imap_security!r}")
        return cls(
            host=settings.imap_host,
            username=settings.imap_username,
            password=settings.imap_password,
            port=settings.imap_port,
            security=security,
            ssl_context=ssl_context,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class FolderState:
    """A selected folder: UIDs are valid only together with ``uidvalidity`` (RFC 3501 2.3.1.1)."""

    name: str
    uidvalidity: int
    uidnext: int | None
    exists: int


class FetchedMessage(NamedTuple):
    """One message as stored on the server."""

    uid: int
    raw: bytes


def encode_mailbox(name: str) -> str:
    """A folder name as an IMAP argument: modified UTF-7 (RFC 3501 5.1.3), quoted."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            utf16 = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(utf16).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    encoded = "".join(out).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{encoded}"'


def decode_mailbox(raw: str) -> str:
    """A folder name from a LIST response: unquoted, modified UTF-7 decoded."""
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        raw = re.sub(r"\\(.)", r"\1", raw[1:-1])

    def utf7(match: re.Match[str]) -> str:
        chunk = match.group(1)
        if not chunk:
            return "&"
        padded = chunk.replace(",", "/") + "=" * (-len(chunk) % 4)
        try:
            return base64.b64decode(padded).decode("utf-16-be")
        except (ValueError, UnicodeDecodeError):
            return match.group(0)

    return re.sub(r"&([A-Za-z0-9+,]*)-", utf7, raw)


def _imap_date(day: date) -> str:
    return f"{day.day}-{_MONTHS[day.month - 1]}-{day.year}"


def _uid_set(uids: Iterable[int]) -> str:
    """``1:3,7,9:10`` for [1, 2, 3, 7, 9, 10] (RFC 3501 9, sequence-set)."""
    ranges: list[str] = []
    ordered = sorted(set(uids))
    start = prev = ordered[0]
    for uid in [*ordered[1:], None]:
        if uid is not None and uid == prev + 1:
            prev = uid
            continue
        ranges.append(str(start) if start == prev else f"{start}:{prev}")
        if uid is not None:
            start = prev = uid
    return ",".join(ranges)


async def _settle(awaitable: Awaitable[Any], seconds: float) -> bool:
    """Await ``awaitable`` at most ``seconds``; False if it did not end by then.

    Unlike ``asyncio.wait_for`` it never waits for the cancellation it asks for, so a
    library call that is slow to end cannot hold up closing (or a worker's shutdown).
    """
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        return False
    task.result()
    return True


class _FetchCommand(aioimaplib.FetchCommand):  # type: ignore[misc]
    """aioimaplib's FETCH, with its "is this message's data complete" check kept up to
    date line by line. aioimaplib 2.0 recomputes it over every line of the response so
    far at each line (regex and join), which makes a FETCH of n messages cost O(n²):
    0.9 ms of CPU per message at 250 messages per FETCH, more than parsing the mail.
    Same rule: after the last ``n FETCH (`` line, parentheses of the non-literal lines
    must balance.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._open = 0
        super().__init__(*args, **kwargs)

    def append_to_resp(self, line: bytes, result: str = "Pending") -> None:
        super().append_to_resp(line, result=result)
        if isinstance(line, bytes):  # literal data comes as bytearray and is not counted
            if self.FETCH_MESSAGE_DATA_RE.match(line):
                self._open = 0
            self._open += line.count(b"(") - line.count(b")")

    def wait_data(self) -> bool:
        return self._open != 0


class ImapClient:
    """A logged-in IMAP connection; use :meth:`connect`, close with ``async with``."""

    def __init__(self, imap: Any, config: ImapConfig, lost: asyncio.Event) -> None:
        self._imap = imap
        self.config = config
        self._lost = lost
        self.selected: FolderState | None = None

    @classmethod
    async def connect(cls, config: ImapConfig) -> ImapClient:
        """Connect and log in; raises :class:`ImapConnectionError`/``AuthenticationError``.

        ``tls`` is what aioimaplib's ``IMAP4_SSL`` does (``IMAP4`` with the default TLS
        context), built directly so the connection-lost callback can be passed.
        """
        lost = asyncio.Event()
        ctx = None
        if config.security == "tls":
            ctx = config.ssl_context or ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        imap = aioimaplib.IMAP4(
            host=config.host,
            port=config.port,
            timeout=config.timeout,
            conn_lost_cb=lambda exc: lost.set(),
            ssl_context=ctx,
        )
        client = cls(imap, config, lost)
        try:
            await imap.wait_hello_from_server()
        except _CONNECTION_ERRORS as exc:
            lost.set()
            await client.close()
            raise ImapConnectionError(f"IMAP connect failed: {type(exc).__name__}") from exc
        try:
            await client._run("LOGIN", imap.login(config.username, config.password))
        except ImapCommandError as exc:
            await client.close()
            raise ImapAuthenticationError(f"IMAP login refused: {exc.text}") from exc
        except ImapConnectionError:
            await client.close()
            raise
        return client

    async def __aenter__(self) -> ImapClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Log out (politely, briefly) and drop the connection."""
        if not self._lost.is_set():
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await _settle(self._imap.logout(), 5)
        transport = getattr(self._imap.protocol, "transport", None)
        if transport is not None:
            transport.close()
            await asyncio.sleep(0)  # the socket closes on the next loop iteration

    @property
    def has_idle(self) -> bool:
        """Whether IDLE (RFC 2177) is used: the server offers it and the config allows it."""
        return self.config.idle and bool(self._imap.has_capability("IDLE"))

    async def _run(self, what: str, call: Awaitable[Any]) -> Any:
        """Await an aioimaplib call: errors wrapped, NO/BAD raised as ImapCommandError."""
        if self._lost.is_set():
            if asyncio.iscoroutine(call):
                call.close()
            raise ImapConnectionError(f"IMAP connection lost before {what}")
        try:
            response = await asyncio.wait_for(call, timeout=self.config.timeout)
        except _CONNECTION_ERRORS as exc:
            # A command cut off midway leaves the protocol state unknown: reconnect.
            self._lost.set()
            raise ImapConnectionError(f"IMAP {what} failed: {type(exc).__name__}") from exc
        if response.result != "OK":
            last = response.lines[-1] if response.lines else b""
            text = bytes(last).decode("utf-8", "replace")[:200]
            raise ImapCommandError(what, str(response.result), text)
        return response

    async def select(self, folder: str = "INBOX") -> FolderState:
        """SELECT ``folder``; its UIDVALIDITY, UIDNEXT and message count (RFC 3501 6.3.1)."""
        response = await self._run("SELECT", self._imap.select(encode_mailbox(folder)))
        text = b"\n".join(bytes(line) for line in response.lines)
        validity = re.search(rb"\[UIDVALIDITY (\d+)\]", text)
        if validity is None:
            raise ImapCommandError("SELECT", "NO", "the server sent no UIDVALIDITY")
        uidnext = re.search(rb"\[UIDNEXT (\d+)\]", text)
        exists = re.search(rb"^(\d+) EXISTS", text, re.M)
        self.selected = FolderState(
            name=folder,
            uidvalidity=int(validity.group(1)),
            uidnext=int(uidnext.group(1)) if uidnext else None,
            exists=int(exists.group(1)) if exists else 0,
        )
        return self.selected

    async def list_folders(self) -> list[tuple[frozenset[str], str]]:
        """Every folder as (flags such as ``\\Sent``, lower-cased; decoded name)."""
        response = await self._run("LIST", self._imap.list('""', "*"))
        folders: list[tuple[frozenset[str], str]] = []
        for line in response.lines[:-1]:
            match = _LIST_LINE.match(bytes(line).strip())
            if match is None:
                continue
            flags = frozenset(f.lower() for f in match.group("flags").decode().split())
            if "\\noselect" in flags or "\\nonexistent" in flags:
                continue
            folders.append((flags, decode_mailbox(match.group("name").decode("utf-8", "replace"))))
        return folders

    async def find_sent_folder(self) -> str | None:
        """The folder of sent mail: RFC 6154 ``\\Sent`` flag, else a common name."""
        folders = await self.list_folders()
        for flags, name in folders:
            if "\\sent" in flags:
                return name
        by_name = {name.casefold(): name for _, name in folders}
        for candidate in SENT_NAMES:
            for prefix in ("", "inbox.", "inbox/"):
                if prefix + candidate in by_name:
                    return by_name[prefix + candidate]
        return None

    async def search_uids(self, *criteria: str) -> list[int]:
        """UID SEARCH in the selected folder, UIDs ascending."""
        response = await self._run("UID SEARCH", self._imap.uid_search(*criteria, charset=None))
        uids = {int(t) for line in response.lines[:-1] for t in bytes(line).split() if t.isdigit()}
        return sorted(uids)

    async def uids_after(self, last_uid: int) -> list[int]:
        """UIDs greater than ``last_uid``, ascending.

        ``UID n:*`` always matches the last message even when its UID is below ``n``
        (RFC 3501 6.4.8), so the answer is filtered: no new mail gives nothing.
        """
        return [u for u in await self.search_uids("UID", f"{last_uid + 1}:*") if u > last_uid]

    async def uids_since(self, day: date | None) -> list[int]:
        """UIDs of messages received on or after ``day`` (all if ``None``), newest first."""
        criteria = ("SINCE", _imap_date(day)) if day is not None else ("ALL",)
        return sorted(await self.search_uids(*criteria), reverse=True)

    async def fetch(self, uids: Sequence[int]) -> list[FetchedMessage]:
        """The raw bytes of ``uids`` (those that still exist), in the order asked."""
        if not uids:
            return []
        response = await self._uid_fetch(uids, "(UID BODY.PEEK[])")
        found: dict[int, bytes] = {}
        meta: bytes | None = None
        for line in response.lines[:-1]:
            if isinstance(line, bytearray):
                uid = _UID.search(meta or b"")
                if uid is not None:
                    found[int(uid.group(1))] = bytes(line)
                meta = None
            elif _FETCH_START.match(line):
                meta = bytes(line)
            elif meta is not None:
                meta += b" " + bytes(line)
        return [FetchedMessage(uid, found[uid]) for uid in uids if uid in found]

    async def _uid_fetch(self, uids: Sequence[int], items: str) -> Any:
        """UID FETCH (RFC 3501 6.4.8) with the linear completeness check."""
        protocol = self._imap.protocol
        command = _FetchCommand(
            protocol.new_tag(),
            _uid_set(uids),
            items,
            prefix="UID",
            loop=protocol.loop,
            timeout=self.config.timeout,
        )
        return await self._run("UID FETCH", protocol.execute(command))

    async def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        """The size in bytes of each of ``uids`` that exists (``RFC822.SIZE``).

        Asked for 400 at a time: aioimaplib's parser recurses once per response line
        of a read, and thousands of lines in one read would exceed the recursion limit.
        """
        found: dict[int, int] = {}
        ordered = sorted(uids)
        for start in range(0, len(ordered), 400):
            part = ordered[start : start + 400]
            response = await self._uid_fetch(part, "(UID RFC822.SIZE)")
            for line in response.lines[:-1]:
                text = bytes(line)
                uid, size = _UID.search(text), _SIZE.search(text)
                if uid is not None and size is not None:
                    found[int(uid.group(1))] = int(size.group(1))
        return found

    async def fetch_batches(
        self, uids: Sequence[int], batch_size: int = 50
    ) -> AsyncIterator[list[FetchedMessage]]:
        """Fetch ``uids`` ``batch_size`` at a time, in the order given; empty batches skipped.

        With :meth:`uids_since` that is the first sync, newest first; with
        :meth:`uids_after` the incremental one, oldest first.
        """
        for start in range(0, len(uids), batch_size):
            batch = await self.fetch(uids[start : start + batch_size])
            if batch:
                yield batch

    async def idle_wait(self, seconds: float, stop: asyncio.Event | None = None) -> bool:
        """Wait in IDLE until new mail (True), ``seconds`` passed or ``stop`` set (False).

        ``seconds`` is capped at :data:`MAX_IDLE_SECONDS`. Keep-alive chatter (``* OK
        Still here``) keeps waiting; a lost connection raises ImapConnectionError.
        """
        seconds = min(seconds, MAX_IDLE_SECONDS)
        queue = self._imap.protocol.idle_queue
        while not queue.empty():  # pushes left over from an earlier IDLE
            queue.get_nowait()
        try:
            idle = await self._imap.idle_start(timeout=seconds)
        except _CONNECTION_ERRORS as exc:
            raise ImapConnectionError(f"IMAP IDLE failed: {type(exc).__name__}") from exc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._lost.wait())]
        if stop is not None:
            waiters.append(asyncio.ensure_future(stop.wait()))
        try:
            while (remaining := deadline - loop.time()) > 0:
                push = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait(
                    [push, *waiters], timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                if push not in done:
                    push.cancel()
                    if self._lost.is_set():
                        raise ImapConnectionError("IMAP connection lost during IDLE")
                    return False
                lines = push.result()
                if lines == aioimaplib.STOP_WAIT_SERVER_PUSH:
                    return False
                if any(re.search(rb"\d+ (EXISTS|RECENT)", bytes(x)) for x in lines):
                    return True
            return False
        finally:
            for waiter in waiters:
                waiter.cancel()
            if not self._lost.is_set():
                with contextlib.suppress(*_CONNECTION_ERRORS):
                    self._imap.idle_done()
                    if not await _settle(idle, self.config.timeout):
                        self._lost.set()  # IDLE never ended: the connection is unusable

    async def wait_for_change(
        self, seconds: float, *, poll_interval: float = 60.0, stop: asyncio.Event | None = None
    ) -> bool:
        """Wait for new mail: IDLE if the server has it, else one ``poll_interval``.

        Returns whether a change may have happened (after polling: always, the caller's
        UID search is the check). Returns early when ``stop`` is set.
        """
        if self.has_idle:
            return await self.idle_wait(seconds, stop)
        stopped = asyncio.Event() if stop is None else stop
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), timeout=min(seconds, poll_interval))
        if self._lost.is_set():
            raise ImapConnectionError("IMAP connection lost while polling")
        return not stopped.is_set()
