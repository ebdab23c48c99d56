"""Documents on a customer's profile and the content-addressed FileStore."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from timeline import customers as customer_ops
from timeline import documents as document_ops
from timeline import merge as merge_ops
from timeline import store
from timeline.db import Database
from timeline.errors import Conflict, NotFound
from timeline.files import FileStore, TooLarge


async def test_upload_is_a_document_and_a_timeline_event(db: Database, files: FileStore) -> None:
    async with db.write() as conn:
        customer_id = await customer_ops.create(conn, name="Ada")
        other = await customer_ops.create(conn, name="Bob")
    content = b"scanned form"
    sha = files.put(content)
    async with db.write() as conn:
        doc, event = await document_ops.add_upload(
            conn,
            customer_id,
            filename="form.pdf",
            content_type="application/pdf",
            sha256=sha,
            size=len(content),
            author="agent-1",
        )
    assert doc.event_id == event.id
    assert event.channel == "document" and event.kind == "document"
    assert event.direction == "internal"
    assert event.subject == "form.pdf"
    assert event.data == {"author": "agent-1"}
    assert event.attachments == [
        {"id": doc.id, "filename": "form.pdf", "content_type": "application/pdf", "size": 12}
    ]
    assert event.to_json()["attachments"][0]["url"] == f"/api/v1/documents/{doc.id}"
    async with db.read() as conn:
        assert await document_ops.get(conn, doc.id) == doc
        assert await document_ops.for_customer(conn, customer_id) == [doc]
        assert await document_ops.for_customer(conn, other) == []
        page, _ = await store.page(conn, customer_id)
        assert [e.id for e in page] == [event.id]
        with pytest.raises(NotFound):
            await document_ops.get(conn, "nope")
    assert files.path(doc.sha256 or "").read_bytes() == content

    async with db.write() as conn:
        await merge_ops.merge(conn, other, customer_id)
    with pytest.raises(Conflict):
        async with db.write() as conn:
            await document_ops.add_upload(
                conn, customer_id, filename="x", content_type="x/y", sha256=sha, size=1, author=None
            )
    with pytest.raises(NotFound):
        async with db.write() as conn:
            await document_ops.add_upload(
                conn, "nobody", filename="x", content_type="x/y", sha256=sha, size=1, author=None
            )


def test_file_store_put_is_content_addressed(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "files")
    sha = files.put(b"abc")
    assert sha == hashlib.sha256(b"abc").hexdigest()
    assert files.path(sha) == tmp_path / "files" / sha[:2] / sha[2:]
    assert files.put(b"abc") == sha
    assert files.exists(sha)
    assert [p.name for p in (tmp_path / "files").rglob("*") if p.is_file()] == [sha[2:]]
    files.delete(sha)
    files.delete(sha)  # missing is fine
    assert not files.exists(sha)
    for bad in ("../../etc/passwd", "A" * 64, "abc", sha[:-1] + "g"):
        with pytest.raises(ValueError):
            files.path(bad)


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_file_store_streams_with_a_limit(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "files")
    sha, size = await files.put_stream(_chunks(b"ab", b"cd"), limit=4)
    assert (sha, size) == (hashlib.sha256(b"abcd").hexdigest(), 4)
    assert files.path(sha).read_bytes() == b"abcd"
    with pytest.raises(TooLarge):
        await files.put_stream(_chunks(b"abc", b"de"), limit=4)
    leftovers = [p for p in (tmp_path / "files").rglob("*") if p.is_file()]
    assert leftovers == [files.path(sha)]  # no temporary file stays behind
