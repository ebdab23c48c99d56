"""Reading mail from a real Dovecot: the client, folder sync, IDLE, resync and crashes."""

from __future__ import annotations

import asyncio
import itertools
from datetime import date

import pytest

from channels.email.backoff import Backoff
from channels.email.errors import ImapAuthenticationError, ImapConnectionError
from channels.email.imap import (
    ImapClient,
    ImapConfig,
    decode_mailbox,
    encode_mailbox,
)
from channels.email.mailsync import (
    Checkpoint,
    FetchBatch,
    FirstSyncProgress,
    SyncResult,
    SyncState,
    sync_folder,
    watch_folder,
)
from channels.email.parse import ParsedEmail, parse_message
from config.settings import Settings
from tests.channels.email.conftest import OURS, fixture_bytes
from tests.peers import free_port
from tests.peers.dovecot import DovecotPeer


def _mail(n: int, subject: str = "Hello") -> bytes:
    return (
        f"From: Customer {n} <c{n}@example.org>\r\nTo: support@commhub.test\r\n"
        f"Subject: {subject} {n}\r\nMessage-ID: <m{n}@example.org>\r\n"
        f"Date: Mon, 3 Jun 2024 10:00:{n % 60:02d} +0000\r\n\r\nBody {n}\r\n"
    ).encode()


def _config(peer: DovecotPeer, **overrides: object) -> ImapConfig:
    values: dict[str, object] = {
        "host": peer.host,
        "port": peer.port,
        "username": peer.user,
        "password": peer.password,
        "security": "none",
        "timeout": 10.0,
    }
    values.update(overrides)
    return ImapConfig(**values)  # type: ignore[arg-type]


class Store:
    """What the hub's wiring does: events unique on Message-ID, and each batch's sync
    state stored with the batch (all or nothing: one transaction)."""

    def __init__(self) -> None:
        self.checkpoints: dict[str, SyncState] = {}
        self.events: dict[str, ParsedEmail] = {}
        self.deliveries: list[str] = []
        self.batches: list[FetchBatch] = []
        self.crash_in_batch: int | None = None
        self.new = asyncio.Event()

    async def load(self, folder: str) -> SyncState | None:
        return self.checkpoints.get(folder)

    async def save(self, folder: str, checkpoint: SyncState) -> None:
        self.checkpoints[folder] = checkpoint

    async def handle(self, batch: FetchBatch) -> None:
        if self.crash_in_batch is not None:
            self.crash_in_batch -= 1
            if self.crash_in_batch == 0:
                self.crash_in_batch = None
                raise RuntimeError("simulated crash before the batch committed")
        self.batches.append(batch)
        for message in batch.messages:
            parsed = parse_message(
                message.raw, our_addresses=OURS, folder_is_sent=batch.folder == "Sent"
            )
            self.deliveries.append(parsed.message_id)
            self.events.setdefault(parsed.message_id, parsed)  # the unique constraint
        if batch.state is not None:
            self.checkpoints[batch.folder] = batch.state
        self.new.set()

    async def sync(self, client: ImapClient, folder: str = "INBOX", **kw: object) -> SyncResult:
        return await sync_folder(
            client,
            folder,
            load_checkpoint=self.load,
            save_checkpoint=self.save,
            handle=self.handle,
            **kw,  # type: ignore[arg-type]
        )


async def test_select_search_and_the_uid_star_trap(dovecot: DovecotPeer) -> None:
    dovecot.append(_mail(1), _mail(2))
    async with await ImapClient.connect(_config(dovecot)) as client:
        state = await client.select("INBOX")
        assert state.uidvalidity == dovecot.uidvalidity() and state.uidnext == 3
        assert state.exists == 2
        # RFC 3501 6.4.8: "UID 3:*" matches the last message although its UID is 2.
        assert await client.search_uids("UID", "3:*") == [2]
        assert await client.uids_after(2) == []
        assert await client.uids_after(1) == [2]
        assert await client.uids_since(date(2000, 1, 1)) == [2, 1]
        fetched = await client.fetch([2, 1, 99])
        assert [m.uid for m in fetched] == [2, 1]
        assert b"Message-ID: <m2@example.org>" in fetched[0].raw


async def test_find_sent_folder(dovecot: DovecotPeer) -> None:
    async with await ImapClient.connect(_config(dovecot)) as client:
        assert await client.find_sent_folder() == "Sent"  # \Sent (RFC 6154)
        folders = dict((name, flags) for flags, name in await client.list_folders())
        assert "\\sent" in folders["Sent"]


async def test_non_ascii_folder_names_round_trip(dovecot: DovecotPeer) -> None:
    assert encode_mailbox("Entwürfe & Co") == '"Entw&APw-rfe &- Co"'
    assert decode_mailbox('"Entw&APw-rfe &- Co"') == "Entwürfe & Co"
    assert decode_mailbox("&ZeVnLIqe-") == "日本語"
    dovecot.create_folder("Gesendete Elemente")
    dovecot.create_folder("Entw&APw-rfe")
    dovecot.append(_mail(5), folder="Entw&APw-rfe")
    async with await ImapClient.connect(_config(dovecot)) as client:
        names = {name for _, name in await client.list_folders()}
        assert {"Entwürfe", "Gesendete Elemente"} <= names
        assert (await client.select("Entwürfe")).exists == 1


async def test_wrong_password_and_no_server() -> None:
    with pytest.raises(ImapConnectionError):
        await ImapClient.connect(
            ImapConfig("127.0.0.1", "u", "p", port=free_port(), security="none", timeout=2)
        )


async def test_wrong_password_is_an_authentication_error(dovecot: DovecotPeer) -> None:
    with pytest.raises(ImapAuthenticationError):
        await ImapClient.connect(_config(dovecot, password="wrong"))


async def test_first_sync_then_nothing_new_then_only_the_new(dovecot: DovecotPeer) -> None:
    names = [
        "plain.eml", "alternative.eml", "mixed_related_inline.eml", "wrong_charset.eml",
        "unknown_charset.eml", "encoded_words.eml", "missing_headers.eml", "huge_header.eml",
        "attachment_noname.eml", "dsn_511.eml", "dsn_422.eml", "auto_reply.eml",
        "reply.eml", "html_only.eml",
    ]  # fmt: skip
    dovecot.append(*(fixture_bytes(n) for n in names))
    store = Store()
    async with await ImapClient.connect(_config(dovecot)) as client:
        first = await store.sync(client, batch_size=5)
        assert first.initial and not first.resync and first.fetched == len(names)
        assert first.checkpoint.last_uid == len(names)
        assert [len(b.messages) for b in store.batches] == [5, 5, 4]
        uids = [m.uid for b in store.batches for m in b.messages]
        assert uids == sorted(uids, reverse=True)  # newest first
        assert len(store.events) == len(names) == len(store.deliveries)
        subjects = {p.event.subject for p in store.events.values()}
        assert "Заказ № 42 \u2013 Lieferung" in subjects

        store.batches.clear()
        again = await store.sync(client)
        assert again.fetched == 0 and store.batches == []  # RELIABILITY 24
        assert again.checkpoint == first.checkpoint

        dovecot.append(_mail(1), _mail(2))
        third = await store.sync(client)
        assert third.fetched == 2 and not third.initial
        assert [m.uid for m in store.batches[0].messages] == [15, 16]
        assert third.checkpoint.last_uid == 16
    assert len(store.events) == len(names) + 2


async def test_first_sync_is_bounded_by_since(dovecot: DovecotPeer) -> None:
    dovecot.append(_mail(1))
    store = Store()
    async with await ImapClient.connect(_config(dovecot)) as client:
        result = await store.sync(client, since=date(2999, 1, 1))
        assert result.fetched == 0 and result.checkpoint.last_uid == 1  # older mail skipped
        dovecot.append(_mail(2))
        assert (await store.sync(client)).fetched == 1


async def test_crash_before_a_batch_commits_loses_and_doubles_nothing(
    dovecot: DovecotPeer,
) -> None:
    dovecot.append(_mail(1))
    store = Store()
    async with await ImapClient.connect(_config(dovecot)) as client:
        await store.sync(client)
        dovecot.append(_mail(2), _mail(3))
        store.crash_in_batch = 1
        with pytest.raises(RuntimeError, match="simulated crash"):
            await store.sync(client)
        assert store.checkpoints["INBOX"] == Checkpoint(dovecot.uidvalidity(), 1)
    # A new process, a new connection: the batch comes again, once.
    async with await ImapClient.connect(_config(dovecot)) as client:
        result = await store.sync(client)
        assert result.fetched == 2 and result.checkpoint.last_uid == 3
    assert store.deliveries.count("<m2@example.org>") == 1
    assert sorted(store.events) == ["<m1@example.org>", "<m2@example.org>", "<m3@example.org>"]


async def test_a_killed_first_sync_resumes_where_it_stopped(dovecot: DovecotPeer) -> None:
    dovecot.append(*(_mail(n) for n in range(1, 6)))
    validity = dovecot.uidvalidity()
    store = Store()
    store.crash_in_batch = 2
    async with await ImapClient.connect(_config(dovecot)) as client:
        with pytest.raises(RuntimeError, match="simulated crash"):
            await store.sync(client, batch_size=2)
    # The first batch (UIDs 5 and 4, newest first) is stored with its progress.
    progress: SyncState = FirstSyncProgress(validity, top=5, below=4)
    assert store.checkpoints["INBOX"] == progress
    dovecot.append(_mail(6))  # arrives while the hub is down
    async with await ImapClient.connect(_config(dovecot)) as client:
        store.batches.clear()
        resumed = await store.sync(client, batch_size=2)
        assert resumed.initial and resumed.fetched == 3
        assert [[m.uid for m in b.messages] for b in store.batches] == [[3, 2], [1]]
        assert resumed.checkpoint == Checkpoint(validity, 5)
        assert store.checkpoints["INBOX"] == Checkpoint(validity, 5)
        later = await store.sync(client)
        assert (later.fetched, later.initial, later.checkpoint.last_uid) == (1, False, 6)
    assert sorted(store.deliveries) == sorted(f"<m{n}@example.org>" for n in range(1, 7))


async def test_uidvalidity_change_is_a_full_resync_without_duplicates(
    dovecot: DovecotPeer,
) -> None:
    dovecot.append(_mail(1), _mail(2))
    store = Store()
    async with await ImapClient.connect(_config(dovecot)) as client:
        await store.sync(client)
    old = store.checkpoints["INBOX"]
    new_validity = dovecot.change_uidvalidity("INBOX")
    dovecot.append(_mail(3))
    store.batches.clear()
    async with await ImapClient.connect(_config(dovecot)) as client:
        result = await store.sync(client)
    assert result.resync and result.initial
    assert result.checkpoint.uidvalidity == new_validity != old.uidvalidity
    assert all(b.resync for b in store.batches)
    assert result.fetched == 3
    assert sorted(store.events) == ["<m1@example.org>", "<m2@example.org>", "<m3@example.org>"]


async def test_sent_folder_copies_are_outbound(dovecot: DovecotPeer) -> None:
    dovecot.append(_mail(7), folder="Sent")
    store = Store()
    async with await ImapClient.connect(_config(dovecot)) as client:
        sent = await client.find_sent_folder()
        assert sent is not None
        await store.sync(client, sent)
    assert store.events["<m7@example.org>"].event.direction.value == "outbound"


async def test_idle_returns_on_new_mail_and_on_timeout(dovecot: DovecotPeer) -> None:
    async with await ImapClient.connect(_config(dovecot)) as client:
        assert client.has_idle
        await client.select("INBOX")
        assert await client.idle_wait(0.3) is False
        waiting = asyncio.create_task(client.idle_wait(10))
        await asyncio.sleep(0.2)
        await asyncio.to_thread(dovecot.append, _mail(1))
        assert await asyncio.wait_for(waiting, 5) is True
        assert await client.uids_after(0) == [1]  # the connection is usable after IDLE


async def _watch(dovecot: DovecotPeer, store: Store, **kw: object) -> None:
    stop = asyncio.Event()
    synced = asyncio.Event()

    async def on_sync(result: SyncResult) -> None:
        synced.set()

    task = asyncio.create_task(
        watch_folder(
            _config(dovecot, **kw),
            "INBOX",
            load_checkpoint=store.load,
            save_checkpoint=store.save,
            handle=store.handle,
            stop=stop,
            poll_interval=0.3,
            backoff=Backoff(base=0.05, maximum=0.2),
            on_sync=on_sync,
        )
    )
    try:
        await asyncio.wait_for(synced.wait(), 5)
        store.new.clear()
        await asyncio.to_thread(dovecot.append, _mail(1))
        await asyncio.wait_for(store.new.wait(), 5)
        assert "<m1@example.org>" in store.events
        if kw.get("idle", True):
            # The server drops the connection (restart, idle limit): reconnect, go on.
            store.new.clear()
            await asyncio.to_thread(dovecot.kick)
            await asyncio.to_thread(dovecot.append, _mail(2))
            await asyncio.wait_for(store.new.wait(), 10)
            assert "<m2@example.org>" in store.events
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_watch_folder_gets_new_mail_during_idle_and_reconnects(
    dovecot: DovecotPeer,
) -> None:
    await _watch(dovecot, Store())


async def test_watch_folder_polls_when_idle_is_off(dovecot: DovecotPeer) -> None:
    await _watch(dovecot, Store(), idle=False)


async def test_watch_folder_retries_with_backoff_until_stopped() -> None:
    attempts: list[float] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def connect(config: ImapConfig) -> ImapClient:
        attempts.append(loop.time())
        if len(attempts) == 4:
            stop.set()
        return await ImapClient.connect(config)

    async def never(*args: object) -> None:
        raise AssertionError("no server, nothing to handle")

    config = ImapConfig("127.0.0.1", "u", "p", port=free_port(), security="none", timeout=2)
    await asyncio.wait_for(
        watch_folder(
            config,
            "INBOX",
            load_checkpoint=never,
            save_checkpoint=never,
            handle=never,
            stop=stop,
            backoff=Backoff(base=0.05, factor=2, jitter=0),
            connect=connect,
        ),
        5,
    )
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert len(attempts) == 4 and gaps[0] >= 0.04 and gaps[2] > gaps[0]


def test_config_from_settings() -> None:
    settings = Settings(
        imap_host="imap.example.com", imap_username="agent", imap_password="s3cret-pw"
    )
    config = ImapConfig.from_settings(settings)
    assert (config.host, config.port, config.security) == ("imap.example.com", 993, "tls")
    assert "s3cret" not in repr(config)
    with pytest.raises(ValueError):
        ImapConfig.from_settings(Settings())
