"""The GDPR export as a ZIP with every file of the customer (RELIABILITY 41), on SQLite and
PostgreSQL: uploads, email attachments, MMS media, call recordings (from the Twilio
sandbox), the JSON export inside, a manifest, audited; answers checked against the schema.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from typing import Any

import sqlalchemy as sa

from tests.hub.conftest import Hub, assert_error
from tests.hub.voice.conftest import (  # noqa: F401 - fixtures, found by pytest by name
    OUR_NUMBER,
    VoiceHub,
    database_url,
    start_hub,
)
from tests.hub.voice.conftest import hub as voice_hub  # noqa: F401
from timeline.events import (
    Attachment,
    Channel,
    Direction,
    Event,
    Identity,
    IdentityKind,
    Kind,
    utcnow,
)
from timeline.ingest import ingest
from timeline.schema import audit_log, documents


def unzip(content: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        assert archive.testzip() is None
        return {name: archive.read(name) for name in archive.namelist()}


async def test_the_archive_holds_the_json_and_every_file_of_every_channel(hub: Hub) -> None:
    sup = hub.auth("supervisor")
    ann = await hub.create_customer(name="Ann", phones=["+14155550123"], emails=["ann@ex.org"])
    upload = b"%PDF-1.4 the contract"
    posted = await hub.api.post(
        f"/api/v1/customers/{ann['id']}/documents",
        files={"file": ("../../etc/contract.pdf", upload, "application/pdf")},
    )
    assert posted.status_code == 201, posted.text
    services = hub.app.state.services
    attachment = b"attached spreadsheet bytes"
    photo = b"\x89PNG mms photo"
    await ingest(
        hub.db,
        [
            Event(
                channel=Channel.EMAIL,
                kind=Kind.MESSAGE,
                direction=Direction.INBOUND,
                occurred_at=utcnow(),
                external_id="<a1@ex.org>",
                subject="numbers",
                text="see attached",
                sender=Identity(IdentityKind.EMAIL, "ann@ex.org"),
                attachments=(Attachment("sheet.xlsx", "application/vnd.ms-excel", attachment),),
            ),
            Event(
                channel=Channel.SMS,
                kind=Kind.MESSAGE,
                direction=Direction.INBOUND,
                occurred_at=utcnow(),
                external_id="MM" + "1" * 32,
                text="photo",
                sender=Identity(IdentityKind.PHONE, "+14155550123"),
                attachments=(
                    Attachment("photo.png", "image/png", photo),
                    Attachment("later.png", "image/png", url="https://api.twilio.com/media/1"),
                ),
            ),
            Event(
                channel=Channel.VOICE,
                kind=Kind.CALL,
                direction=Direction.INBOUND,
                occurred_at=utcnow(),
                external_id="CA" + "2" * 32,
                status="completed",
                sender=Identity(IdentityKind.PHONE, "+14155550123"),
                data={"recording": {"sid": "RE" + "3" * 32, "status": "completed"}},
            ),
        ],
        region="US",
        files=services.files,
    )

    # Agents may not export; unknown ids are 404.
    assert_error(await hub.api.get(f"/api/v1/customers/{ann['id']}/export.zip"), 403)
    assert_error(await hub.api.get("/api/v1/customers/nobody/export.zip", headers=sup), 404)

    answer = await hub.api.get(f"/api/v1/customers/{ann['id']}/export.zip", headers=sup)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/zip"
    assert f"customer-{ann['id']}.zip" in answer.headers["content-disposition"]
    assert answer.headers["cache-control"] == "no-store"
    entries = unzip(answer.content)

    exported = json.loads(entries["export.json"])
    plain = (await hub.api.get(f"/api/v1/customers/{ann['id']}/export", headers=sup)).json()
    exported.pop("exported_at"), plain.pop("exported_at")
    assert exported == plain
    assert {e["channel"] for e in exported["events"]} >= {"email", "sms", "voice", "document"}

    by_name = {d["filename"]: d["id"] for d in exported["documents"]}
    assert entries[f"files/{by_name['contract.pdf']}-contract.pdf"] == upload
    assert entries[f"files/{by_name['sheet.xlsx']}-sheet.xlsx"] == attachment
    assert entries[f"files/{by_name['photo.png']}-photo.png"] == photo
    assert not any(".." in name or name.startswith("/") for name in entries)

    manifest = json.loads(entries["manifest.json"])
    assert manifest["customer_id"] == ann["id"]
    for item in manifest["files"]:
        assert hashlib.sha256(entries[item["path"]]).hexdigest() == item["sha256"]
    reasons = {
        (i.get("document_id") or i.get("recording_sid")): i["reason"]
        for i in manifest["not_included"]
    }
    # The MMS media not fetched yet, and the recording (no provider configured here).
    assert reasons == {by_name["later.png"]: "pending", "RE" + "3" * 32: "provider off"}

    async with hub.db.read() as conn:
        records = list(
            (
                await conn.execute(
                    sa.select(audit_log).where(audit_log.c.action == "customer.export")
                )
            ).mappings()
        )
    zipped = [r for r in records if r["detail"].get("format") == "zip"]
    assert len(zipped) == 1 and zipped[0]["customer_id"] == ann["id"]
    assert zipped[0]["detail"]["documents"] == 4 and zipped[0]["detail"]["recordings"] == 1
    # The temporary archive is gone once sent.
    assert not any("export-" in str(p) for p in hub.stored_files())


async def test_a_file_deleted_by_retention_is_named_in_the_manifest(hub: Hub) -> None:
    sup = hub.auth("supervisor")
    ann = await hub.create_customer(name="Ann")
    posted = await hub.api.post(
        f"/api/v1/customers/{ann['id']}/documents",
        files={"file": ("old.txt", b"old", "text/plain")},
    )
    doc_id = posted.json()["document"]["id"]
    async with hub.db.write() as conn:
        await conn.execute(
            documents.update()
            .where(documents.c.id == doc_id)
            .values(sha256=None, size=0, purged_at=utcnow())
        )
    answer = await hub.api.get(f"/api/v1/customers/{ann['id']}/export.zip", headers=sup)
    manifest = json.loads(unzip(answer.content)["manifest.json"])
    assert manifest["files"] == []
    assert manifest["not_included"] == [{"document_id": doc_id, "reason": "deleted"}]


async def test_the_archive_holds_call_recordings_from_the_provider(voice_hub: VoiceHub) -> None:  # noqa: F811
    hub = voice_hub
    customer = await hub.customer_with("+14155550150")
    await hub.sandbox.call_hub("+14155550150", OUR_NUMBER)
    await hub.sandbox.settle()
    (recording_sid,) = hub.sandbox.voice.recordings
    sup = {"Authorization": f"Bearer {hub.tokens['supervisor']}"}
    events: list[dict[str, Any]] = []
    for _ in range(50):
        events = [e for e in await hub.timeline(customer["id"]) if e["channel"] == "voice"]
        if events and events[0]["data"].get("recording", {}).get("status") == "completed":
            break
        await hub.sandbox.settle()
    (event,) = events
    answer = await hub.api.get(f"/api/v1/customers/{customer['id']}/export.zip", headers=sup)
    assert answer.status_code == 200, answer.text
    entries = unzip(answer.content)
    audio = entries[f"recordings/{event['id']}-{recording_sid}.wav"]
    assert audio == hub.sandbox.voice.audio[recording_sid]
    assert audio.startswith(b"RIFF")
    manifest = json.loads(entries["manifest.json"])
    assert manifest["not_included"] == []
    # The provider's URL is nowhere in the archive.
    media_url = hub.sandbox.voice.recordings[recording_sid]["media_url"]
    assert all(media_url.encode() not in body for body in entries.values())
