"""Documents (multipart upload, download, limits) and the data subject's rights (export,
erasure) over HTTP."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

from tests.hub.conftest import MAX_UPLOAD, Hub, assert_error
from timeline.schema import documents, events


async def upload(
    hub: Hub, customer_id: str, content: bytes, filename: str = "report.txt"
) -> dict[str, Any]:
    """POST a file as ``text/plain``; the answer must be 201 (document and event)."""
    response = await hub.api.post(
        f"/api/v1/customers/{customer_id}/documents",
        files={"file": (filename, content, "text/plain")},
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def assert_nothing_written(hub: Hub, customer_id: str) -> None:
    """No document row, no timeline event and no file (not even a temporary one)."""
    listed = await hub.api.get(f"/api/v1/customers/{customer_id}/documents")
    assert listed.json() == {"items": [], "next": None}
    timeline = await hub.api.get(f"/api/v1/customers/{customer_id}/timeline")
    assert timeline.json() == {"items": [], "next": None}
    assert await hub.count(documents) == 0
    assert await hub.count(events) == 0
    assert hub.stored_files() == []


async def test_upload_then_download_the_same_bytes(hub: Hub) -> None:
    ann = await hub.create_customer(name="Ann")
    content = os.urandom(3000) + "ünïcode\r\n".encode()
    created = await upload(hub, ann["id"], content, filename="../../etc/Quarterly report.txt")
    document, event = created["document"], created["event"]
    assert document["customer_id"] == ann["id"]
    assert document["filename"] == "Quarterly report.txt"  # no path survives
    assert document["size"] == len(content)
    assert document["sha256"] == hashlib.sha256(content).hexdigest()
    assert document["content_type"] == "text/plain"
    assert document["event_id"] == event["id"]
    assert (event["channel"], event["kind"], event["direction"]) == (
        "document",
        "document",
        "internal",
    )
    assert event["attachments"] == [
        {
            "id": document["id"],
            "filename": "Quarterly report.txt",
            "content_type": "text/plain",
            "size": len(content),
            "url": document["url"],
        }
    ]

    response = await hub.api.get(document["url"])
    assert response.status_code == 200
    assert response.content == content
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment")
    assert "Quarterly report.txt" in disposition or "Quarterly%20report.txt" in disposition
    assert response.headers["content-type"].startswith("text/plain")

    listed = (await hub.api.get(f"/api/v1/customers/{ann['id']}/documents")).json()
    assert listed == {"items": [document], "next": None}
    timeline = (await hub.api.get(f"/api/v1/customers/{ann['id']}/timeline")).json()
    assert timeline["items"] == [event]
    customer = (await hub.api.get(f"/api/v1/customers/{ann['id']}")).json()
    assert customer["counts"] == {"document": 1, "total": 1}
    # Downloading needs a token like everything else.
    assert_error(await hub.anon.get(document["url"]), 401, "unauthorized")


async def test_an_upload_of_exactly_the_limit_is_accepted(hub: Hub) -> None:
    ann = await hub.create_customer(name="Ann")
    content = b"a" * MAX_UPLOAD
    created = await upload(hub, ann["id"], content)
    assert created["document"]["size"] == MAX_UPLOAD
    response = await hub.api.get(created["document"]["url"])
    assert response.content == content


async def test_an_upload_over_the_limit_is_413_and_writes_nothing(hub: Hub) -> None:
    ann = await hub.create_customer(name="Ann")
    url = f"/api/v1/customers/{ann['id']}/documents"
    # Just over: the declared length is within the multipart envelope, the file is not.
    response = await hub.api.post(url, files={"file": ("big.bin", b"b" * (MAX_UPLOAD + 1))})
    assert_error(response, 413, "too_large")
    await assert_nothing_written(hub, ann["id"])
    # Far over: refused by the declared length before reading.
    response = await hub.api.post(url, files={"file": ("big.bin", b"c" * (MAX_UPLOAD * 4))})
    assert_error(response, 413, "too_large")
    await assert_nothing_written(hub, ann["id"])


async def test_a_chunked_upload_over_the_limit_is_413_and_writes_nothing(hub: Hub) -> None:
    ann = await hub.create_customer(name="Ann")
    boundary = "hubtestboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    async def body() -> AsyncIterator[bytes]:
        yield head
        for _ in range(8):  # 8 x 16 KiB: twice the limit, no Content-Length
            yield b"d" * (16 * 1024)
        yield tail

    response = await hub.api.post(
        f"/api/v1/customers/{ann['id']}/documents",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "too_large")
    await assert_nothing_written(hub, ann["id"])


async def test_a_non_multipart_upload_is_400(hub: Hub) -> None:
    ann = await hub.create_customer(name="Ann")
    url = f"/api/v1/customers/{ann['id']}/documents"
    response = await hub.api.post(url, json={"file": "aGVsbG8="})
    assert_error(response, 400, "bad_request")
    response = await hub.api.post(
        url, content=b"hello", headers={"Content-Type": "application/octet-stream"}
    )
    assert_error(response, 400, "bad_request")
    response = await hub.api.post(
        url,
        content=b"--x\r\ngarbage without headers",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert_error(response, 400, "bad_request")
    # Multipart, but no file part: 422 naming the field.
    response = await hub.api.post(url, data={"note": "no file"}, files={"other": ("a", b"x")})
    assert assert_error(response, 422, "invalid_field")["field"] == "file"
    await assert_nothing_written(hub, ann["id"])


async def test_export_holds_events_and_documents(hub: Hub) -> None:
    ann = await hub.create_customer(name="Ann", phones=["+14155550100"])
    note = await hub.note(ann["id"], "prefers mornings")
    created = await upload(hub, ann["id"], b"contract text", filename="contract.txt")
    response = await hub.api.get(
        f"/api/v1/customers/{ann['id']}/export", headers=hub.auth("supervisor")
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"].startswith("attachment")
    export = response.json()
    assert export["customer"]["id"] == ann["id"]
    assert export["customer"]["phones"] == ["+14155550100"]
    assert {e["id"] for e in export["events"]} == {note["id"], created["event"]["id"]}
    assert note in export["events"]
    assert export["documents"] == [created["document"]]
    assert export["outbox"] == []
    assert export["merges"] == []
    assert export["exported_at"].endswith("Z")


async def test_erasure_leaves_a_tombstone_and_deletes_the_file(hub: Hub) -> None:
    ann = await hub.create_customer(
        name="Ann Lee", phones=["+14155550100"], emails=["ann@x.example"]
    )
    await hub.note(ann["id"], "secret umbrella plans")
    created = await upload(hub, ann["id"], b"passport scan", filename="passport.txt")
    assert len(hub.stored_files()) == 1

    response = await hub.api.delete(f"/api/v1/customers/{ann['id']}", headers=hub.auth("admin"))
    assert response.status_code == 200, response.text
    tombstone = response.json()
    assert tombstone["id"] == ann["id"] and tombstone["erased_at"].endswith("Z")

    assert_error(await hub.api.get(f"/api/v1/customers/{ann['id']}"), 404, "not_found")
    assert_error(await hub.api.get(created["document"]["url"]), 404, "not_found")
    export = await hub.api.get(
        f"/api/v1/customers/{ann['id']}/export", headers=hub.auth("supervisor")
    )
    assert_error(export, 404, "not_found")
    assert hub.stored_files() == []
    assert await hub.count(documents) == 0
    assert await hub.count(events) == 0
    for params in ({"phone": "+14155550100"}, {"email": "ann@x.example"}, {"q": "umbrella"}):
        found = await hub.api.get("/api/v1/customers", params=params)
        assert found.json()["items"] == [], params
    assert (await hub.api.get("/api/v1/customers", params={"q": "Ann"})).json()["items"] == []
    # Erasing again is 404; the identities are free for a new customer.
    again = await hub.api.delete(f"/api/v1/customers/{ann['id']}", headers=hub.auth("admin"))
    assert_error(again, 404, "not_found")
    await hub.create_customer(phones=["+14155550100"], emails=["ann@x.example"])


async def test_erasure_keeps_a_file_another_customer_still_uses(hub: Hub) -> None:
    ann = await hub.create_customer(name="Ann")
    bob = await hub.create_customer(name="Bob")
    await upload(hub, ann["id"], b"the same menu")
    bobs = await upload(hub, bob["id"], b"the same menu")
    assert len(hub.stored_files()) == 1
    response = await hub.api.delete(f"/api/v1/customers/{ann['id']}", headers=hub.auth("admin"))
    assert response.status_code == 200
    assert len(hub.stored_files()) == 1
    download = await hub.api.get(bobs["document"]["url"])
    assert download.content == b"the same menu"


async def test_erasure_takes_customers_merged_into_it(hub: Hub) -> None:
    ann = await hub.create_customer(name="Ann", phones=["+14155550100"])
    old = await hub.create_customer(name="Ann (old)", emails=["ann@x.example"])
    merged = await hub.api.post(
        f"/api/v1/customers/{ann['id']}/merge", json={"other_id": old["id"]}
    )
    assert merged.status_code == 200
    response = await hub.api.delete(f"/api/v1/customers/{ann['id']}", headers=hub.auth("admin"))
    assert response.status_code == 200
    assert_error(await hub.api.get(f"/api/v1/customers/{old['id']}"), 404, "not_found")
    found = await hub.api.get("/api/v1/customers", params={"email": "ann@x.example"})
    assert found.json()["items"] == []
