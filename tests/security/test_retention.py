"""Retention (HUB_RETENTION_*): the worker job deletes what is past its time, in batches,
leaving markers; real files on disk, SQLite and PostgreSQL, the Twilio sandbox (DELETE
of recordings through the official SDK) for recordings. Nothing is mocked; times are
moved by writing old timestamps to the rows."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from channels.twilio.client import TwilioClient
from config import Settings
from hub import retention
from hub.services import Services
from hub.workers import base_jobs
from tests.hub.conftest import Hub
from tests.hub.voice.conftest import (  # noqa: F401 - fixtures, found by pytest by name
    OUR_NUMBER,
    VoiceHub,
    database_url,
    start_hub,
)
from tests.hub.voice.conftest import hub as voice_hub  # noqa: F401
from timeline import audit as audit_log_ops
from timeline import retention as retention_ops
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
from timeline.schema import audit_log, documents, events

OLD = timedelta(days=40)


def with_retention(services: Services, **days: int) -> Services:
    settings = dataclasses.replace(
        services.settings, **{f"retention_{kind}_days": n for kind, n in days.items()}
    )
    return dataclasses.replace(services, settings=settings)


async def upload(hub: Hub, customer_id: str, name: str, content: bytes) -> str:
    answer = await hub.api.post(
        f"/api/v1/customers/{customer_id}/documents",
        files={"file": (name, content, "application/octet-stream")},
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["document"]["id"])


async def age_documents(hub: Hub, ids: list[str], by: timedelta) -> None:
    async with hub.db.write() as conn:
        await conn.execute(
            documents.update().where(documents.c.id.in_(ids)).values(created_at=utcnow() - by)
        )


async def document_rows(hub: Hub) -> dict[str, Any]:
    async with hub.db.read() as conn:
        rows = await conn.execute(sa.select(documents))
        return {r["id"]: r for r in rows.mappings()}


def test_the_job_is_registered() -> None:
    assert base_jobs(Settings())["retention"] == (retention.retention_job, retention.EVERY)


async def test_settings_off_change_nothing(hub: Hub) -> None:
    ann = await hub.create_customer(name="Ann")
    doc = await upload(hub, ann["id"], "a.txt", b"kept forever")
    await age_documents(hub, [doc], timedelta(days=3650))
    report = await retention.apply(hub.app.state.services)
    assert not report.changed()
    assert (await document_rows(hub))[doc]["purged_at"] is None
    assert len(hub.stored_files()) == 1


async def test_old_files_are_deleted_and_their_documents_kept_as_markers(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "BATCH", 2)  # several batches in one run
    services = with_retention(hub.app.state.services, files=30)
    ann = await hub.create_customer(name="Ann", phones=["+14155550123"])
    old_only = await upload(hub, ann["id"], "old.pdf", b"old contract")
    old_shared = await upload(hub, ann["id"], "copy-old.txt", b"shared bytes")
    new_shared = await upload(hub, ann["id"], "copy-new.txt", b"shared bytes")
    fresh = await upload(hub, ann["id"], "new.txt", b"new notes")
    await ingest(
        hub.db,
        [
            Event(
                channel=Channel.SMS,
                kind=Kind.MESSAGE,
                direction=Direction.INBOUND,
                occurred_at=utcnow() - OLD,
                external_id="MM" + "5" * 32,
                text="photos",
                sender=Identity(IdentityKind.PHONE, "+14155550123"),
                attachments=(
                    Attachment("photo.png", "image/png", b"\x89PNG old photo"),
                    Attachment("pending.png", "image/png", url="https://api.twilio.com/m/1"),
                ),
            )
        ],
        region="US",
        files=services.files,
    )
    rows = await document_rows(hub)
    mms = [i for i, r in rows.items() if r["event_id"] and r["filename"].endswith(".png")]
    await age_documents(hub, [old_only, old_shared, *mms], OLD)
    files_before = {r["sha256"]: r["sha256"] for r in rows.values() if r["sha256"]}
    assert len(hub.stored_files()) == 4  # the shared content is one file

    report = await retention.apply(services)
    assert report.documents == 4  # old_only, old_shared, the photo, the pending media
    assert report.files_deleted == 2  # old_only's and the photo's; the shared one stays

    rows = await document_rows(hub)
    for doc_id in (old_only, old_shared, *mms):
        row = rows[doc_id]
        assert row["purged_at"] is not None
        assert row["sha256"] is None and row["source_url"] is None and row["size"] == 0
    for doc_id in (new_shared, fresh):
        assert rows[doc_id]["purged_at"] is None and rows[doc_id]["sha256"] in files_before
    on_disk = {p.parent.name + p.name for p in hub.stored_files()}
    assert on_disk == {rows[new_shared]["sha256"], rows[fresh]["sha256"]}

    # The marker: listed, not downloadable; the kept copy still downloads.
    listed = (await hub.api.get(f"/api/v1/customers/{ann['id']}/documents")).json()
    assert {d["id"] for d in listed["items"]} >= {old_only, old_shared}
    assert (await hub.api.get(f"/api/v1/documents/{old_only}")).status_code == 404
    kept = await hub.api.get(f"/api/v1/documents/{new_shared}")
    assert kept.status_code == 200 and kept.content == b"shared bytes"

    async with hub.db.read() as conn:
        (record,) = (
            await conn.execute(
                sa.select(audit_log).where(audit_log.c.action == "retention.applied")
            )
        ).mappings()
    assert record["detail"]["documents"] == 4 and record["detail"]["files_deleted"] == 2
    # A second run finds nothing to do.
    assert not (await retention.apply(services)).changed()


async def test_provider_data_and_audit_records_expire(hub: Hub) -> None:
    services = with_retention(hub.app.state.services, provider_data=90, audit=365)
    geo = {"FromCity": "OAKLAND", "FromZip": "94612", "CallerName": "ANN", "AccountSid": "AC1"}
    result = await ingest(
        hub.db,
        [
            Event(
                channel=Channel.SMS,
                kind=Kind.MESSAGE,
                direction=Direction.INBOUND,
                occurred_at=occurred,
                external_id=sid,
                text="hi",
                sender=Identity(IdentityKind.PHONE, "+14155550123"),
                data=dict(geo),
            )
            for sid, occurred in (
                ("SM" + "a" * 32, utcnow() - timedelta(days=100)),
                ("SM" + "b" * 32, utcnow() - timedelta(days=10)),
            )
        ],
        region="US",
    )
    assert len(result.changed) == 2
    old_record = await audit_log_ops.record(hub.db, "customer.export", detail={"n": 1})
    new_record = await audit_log_ops.record(hub.db, "customer.export", detail={"n": 2})
    async with hub.db.write() as conn:
        await conn.execute(
            audit_log.update()
            .where(audit_log.c.id == old_record)
            .values(at=utcnow() - timedelta(days=400))
        )

    report = await retention.apply(services)
    assert report.provider_data == 1 and report.audit_records == 1

    async with hub.db.read() as conn:
        rows = {
            r.external_id: r.data
            for r in await conn.execute(sa.select(events.c.external_id, events.c.data))
        }
        left = set((await conn.execute(sa.select(audit_log.c.id))).scalars())
    old, new = rows["SM" + "a" * 32], rows["SM" + "b" * 32]
    assert not {"FromCity", "FromZip", "CallerName"} & set(old)
    assert old["AccountSid"] == "AC1" and "provider_data_removed_at" in old["retention"]
    assert {k: new[k] for k in geo} == geo
    assert old_record not in left and new_record in left
    assert not (await retention.apply(services)).provider_data


async def test_recordings_without_twilio_are_left_alone(hub: Hub) -> None:
    services = with_retention(hub.app.state.services, recordings=30)
    recording = {"sid": "RE" + "7" * 32, "status": "completed"}
    await ingest(
        hub.db,
        [
            Event(
                channel=Channel.VOICE,
                kind=Kind.CALL,
                direction=Direction.INBOUND,
                occurred_at=utcnow() - OLD,
                external_id="CA" + "7" * 32,
                status="completed",
                sender=Identity(IdentityKind.PHONE, "+14155550123"),
                data={"recording": recording},
            )
        ],
        region="US",
    )
    report = await retention.apply(services)
    assert report.recordings_deleted == 0 and report.recordings_failed == 0
    async with hub.db.read() as conn:
        due = await retention_ops.due_recordings(conn, utcnow(), 10)
        assert [d.sid for d in due] == [recording["sid"]]
    # The marker the job writes once the provider deleted its copy:
    async with hub.db.write() as conn:
        assert await retention_ops.mark_recording_deleted(conn, due[0].event_id, utcnow())
    async with hub.db.read() as conn:
        data = (
            await conn.execute(sa.select(events.c.data).where(events.c.id == due[0].event_id))
        ).scalar_one()
        assert await retention_ops.due_recordings(conn, utcnow(), 10) == []
    assert data["recording"]["status"] == "deleted" and "url" not in data["recording"]
    assert data["recording"]["sid"] == recording["sid"] and data["recording"]["deleted_at"]


async def recorded_call(hub: VoiceHub, customer_id: str, age: timedelta) -> dict[str, Any]:
    """A customer's call through the sandbox, recorded, its event ``age`` old."""
    result = await hub.sandbox.call_hub("+14155550150", OUR_NUMBER)
    for _ in range(50):
        await hub.sandbox.settle()
        calls = [e for e in await hub.timeline(customer_id) if e["external_id"] == result.sid]
        if calls and calls[0]["data"].get("recording", {}).get("status") == "completed":
            break
    (call,) = calls
    assert call["data"]["recording"]["sid"] in hub.sandbox.voice.recordings
    async with hub.db.write() as conn:
        await conn.execute(
            events.update().where(events.c.id == call["id"]).values(occurred_at=utcnow() - age)
        )
    return call


async def call_event(hub: VoiceHub, customer_id: str, event_id: str) -> dict[str, Any]:
    (event,) = [e for e in await hub.timeline(customer_id) if e["id"] == event_id]
    return event


async def test_old_recordings_are_deleted_at_the_provider_and_leave_a_marker(
    voice_hub: VoiceHub,  # noqa: F811
) -> None:
    hub = voice_hub
    customer = await hub.customer_with("+14155550150")
    old = await recorded_call(hub, customer["id"], OLD)
    gone = await recorded_call(hub, customer["id"], OLD)
    fresh = await recorded_call(hub, customer["id"], timedelta(days=2))
    old_sid, gone_sid, fresh_sid = (c["data"]["recording"]["sid"] for c in (old, gone, fresh))
    media = f"{hub.settings.twilio_api_base}/2010-04-01/Accounts/{hub.settings.twilio_account_sid}"
    auth = (hub.settings.twilio_account_sid, hub.settings.twilio_auth_token)
    # One of them was already deleted at the provider (by hand in Twilio's console): 404.
    async with TwilioClient.from_settings(hub.settings) as twilio:
        await twilio.delete_recording(gone_sid)
    assert gone_sid not in hub.sandbox.voice.recordings

    services = with_retention(hub.app.state.services, recordings=30)
    report = await retention.apply(services)
    assert report.recordings_deleted == 2 and report.recordings_failed == 0

    # At the provider: the old recording and its media are gone, the fresh one is kept.
    assert set(hub.sandbox.voice.recordings) == {fresh_sid}
    async with httpx.AsyncClient(auth=auth) as http:
        for sid in (old_sid, gone_sid):
            assert (await http.get(f"{media}/Recordings/{sid}.wav")).status_code == 404
            assert (await http.get(f"{media}/Recordings/{sid}.json")).status_code == 404
        assert (await http.get(f"{media}/Recordings/{fresh_sid}.wav")).status_code == 200

    # In the hub: the marker, and playback answers 404 no_recording (docs/voice.md).
    for call, sid in ((old, old_sid), (gone, gone_sid)):
        after = await call_event(hub, customer["id"], call["id"])
        marker = after["data"]["recording"]
        assert marker == {"sid": sid, "status": "deleted", "deleted_at": marker["deleted_at"]}
        played = await hub.api.get(call["data"]["recording"]["url"])
        assert played.status_code == 404 and played.json()["error"]["code"] == "no_recording"
    kept = await call_event(hub, customer["id"], fresh["id"])
    assert kept["data"]["recording"] == fresh["data"]["recording"]
    audio = await hub.api.get(kept["data"]["recording"]["url"])
    assert audio.status_code == 200 and audio.content == hub.sandbox.voice.audio[fresh_sid]

    async with hub.db.read() as conn:
        (record,) = (
            await conn.execute(
                sa.select(audit_log).where(audit_log.c.action == "retention.applied")
            )
        ).mappings()
    assert record["detail"]["recordings_deleted"] == 2
    # A second run finds nothing to do and asks the provider nothing.
    before = len(hub.sandbox.voice.recordings)
    assert not (await retention.apply(services)).changed()
    assert len(hub.sandbox.voice.recordings) == before


async def test_a_recording_the_provider_does_not_delete_stays_referenced(
    voice_hub: VoiceHub,  # noqa: F811
) -> None:
    hub = voice_hub
    customer = await hub.customer_with("+14155550150")
    call = await recorded_call(hub, customer["id"], OLD)
    recording_sid = call["data"]["recording"]["sid"]
    services = with_retention(hub.app.state.services, recordings=30)
    # The provider refuses the DELETE (here: 401 for a revoked auth token; a 5xx or no
    # answer goes the same way): the hub keeps its reference and plays the recording as
    # before, to try again next run.
    refused = dataclasses.replace(
        services, settings=dataclasses.replace(services.settings, twilio_auth_token="revoked")
    )
    report = await retention.apply(refused)
    assert report.recordings_failed == 1 and report.recordings_deleted == 0
    assert recording_sid in hub.sandbox.voice.recordings
    after = await call_event(hub, customer["id"], call["id"])
    assert after["data"]["recording"] == call["data"]["recording"]
    audio = await hub.api.get(after["data"]["recording"]["url"])
    assert audio.status_code == 200 and audio.content == hub.sandbox.voice.audio[recording_sid]
    # The next run, with working credentials, deletes it.
    report = await retention.apply(services)
    assert report.recordings_deleted == 1 and report.recordings_failed == 0
    assert recording_sid not in hub.sandbox.voice.recordings
