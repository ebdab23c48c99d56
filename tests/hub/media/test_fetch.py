"""End to end: an MMS through the sandbox, the webhook, the fetcher and the documents API.

Each test runs once on SQLite and once on PostgreSQL (``database_url``).
"""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

import httpx
import pytest

from channels.twilio.sandbox import MediaFile, serve
from hub.media import MAX_ATTEMPTS, MAX_MEDIA_BYTES, fetch_media, fetch_round
from hub.workers import channel_jobs
from tests.hub.media.conftest import ACCOUNT_SID, AUTH_TOKEN, BASIC, Foreign, MmsHub, Seen
from timeline.events import utcnow
from timeline.records import StoredEvent

PDF = b"%PDF-1.4\n% not much of a claim form\n%%EOF\n"


async def test_mms_media_are_fetched_with_the_accounts_credentials(mms_hub: MmsHub) -> None:
    result = await mms_hub.text(
        MediaFile("image/png"), MediaFile("application/pdf", PDF), body="The damage"
    )
    media_url = re.compile(
        re.escape(f"{mms_hub.sandbox_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/")
        + f"{result.sid}/Media/ME[0-9a-f]{{32}}"
    )
    assert len(result.media_urls) == 2
    assert all(media_url.fullmatch(url) for url in result.media_urls)

    # The webhook stored the message with two attachments, pending.
    event = await mms_hub.event(result.sid)
    assert [(a["content_type"], a["size"]) for a in event["attachments"]] == [
        ("image/png", 0),
        ("application/pdf", 0),
    ]
    docs = await mms_hub.documents(event["id"])
    assert [(d["source_url"], d["sha256"]) for d in docs] == [
        (url, None) for url in result.media_urls
    ]
    pending = await mms_hub.api.get(f"/api/v1/documents/{docs[0]['id']}")
    assert pending.status_code == 404

    with mms_hub.services.publisher.subscribe() as live:
        await fetch_media(mms_hub.services)
        topic, published = live.queue.get_nowait() or ("", None)
        assert live.queue.empty()  # one event, published once for both files
    sent = [mms_hub.sandbox.media[url.rsplit("/", 1)[1]].content for url in result.media_urls]
    assert sent[0].startswith(b"\x89PNG\r\n\x1a\n") and sent[1] == PDF

    # Both downloaded with the account's credentials, each once.
    assert sorted(mms_hub.media_requests(), key=lambda s: s.path) == sorted(
        (Seen(url.removeprefix(mms_hub.sandbox_url), BASIC) for url in result.media_urls),
        key=lambda s: s.path,
    )
    docs = await mms_hub.documents(event["id"])
    assert [(d["sha256"], d["size"]) for d in docs] == [
        (hashlib.sha256(content).hexdigest(), len(content)) for content in sent
    ]
    event = await mms_hub.event(result.sid)
    assert [a["size"] for a in event["attachments"]] == [len(content) for content in sent]
    assert "media_errors" not in (event["data"] or {})
    assert topic == "timeline" and isinstance(published, StoredEvent)
    assert published.id == event["id"] and published.attachments == event["attachments"]

    for doc, content in zip(docs, sent, strict=True):
        answer = await mms_hub.api.get(f"/api/v1/documents/{doc['id']}")
        assert answer.status_code == 200
        assert answer.content == content
        assert answer.headers["content-type"].startswith(doc["content_type"])
    timeline = await mms_hub.api.get(f"/api/v1/customers/{event['customer_id']}/timeline")
    [shown] = timeline.json()["items"]
    assert [a["size"] for a in shown["attachments"]] == [len(content) for content in sent]

    # Nothing is left to do: the next round asks nobody.
    before = len(mms_hub.sandbox_seen)
    assert (await fetch_round(mms_hub.services)).attempted == 0
    assert len(mms_hub.sandbox_seen) == before


async def test_credentials_never_leave_twilios_origin(
    mms_hub: MmsHub, foreign: Foreign, cdn: list[Seen]
) -> None:
    # Twilio media that redirect to the CDN (another origin), and a foreign host's file
    # and redirect into Twilio's origin.
    first = await mms_hub.text(MediaFile("image/jpeg"))
    [twilio_url] = first.media_urls
    foreign.files["/photo.gif"] = (b"GIF89a not really", "image/gif")
    foreign.redirects["/to-twilio"] = twilio_url
    second = await mms_hub.text(urls=(f"{foreign.url}/photo.gif", f"{foreign.url}/to-twilio"))

    done = await fetch_round(mms_hub.services)
    assert (done.attempted, done.fetched, done.failed) == (3, 2, 1)

    twilio_path = twilio_url.removeprefix(mms_hub.sandbox_url)
    media_sid = twilio_path.rsplit("/", 1)[1]
    # The account's credentials went to the sandbox only; httpx dropped them on the
    # redirect to the CDN.
    assert Seen(twilio_path, BASIC) in mms_hub.media_requests()
    assert [s.authorization for s in cdn if s.path == f"/sandbox/media-cdn/{media_sid}"] == [None]
    [twilio_doc] = await mms_hub.documents((await mms_hub.event(first.sid))["id"])
    content = mms_hub.sandbox.media[media_sid].content
    assert twilio_doc["sha256"] == hashlib.sha256(content).hexdigest()

    # The foreign host got no credentials; its file is stored.
    assert foreign.at("/photo.gif") == [Seen("/photo.gif", None)]
    assert foreign.at("/to-twilio") == [Seen("/to-twilio", None)]
    event = await mms_hub.event(second.sid)
    photo, redirected = await mms_hub.documents(event["id"])
    assert photo["sha256"] == hashlib.sha256(b"GIF89a not really").hexdigest()

    # Its redirect into Twilio's origin carried none either: the sandbox said 401.
    assert mms_hub.media_requests().count(Seen(twilio_path, None)) == 1
    assert redirected["sha256"] is None
    error = event["data"]["media_errors"][redirected["id"]]
    assert (error["status"], error["attempts"], error["error"]) == (401, 1, "HTTP 401")
    assert "retry_at" in error and "gave_up_at" not in error
    assert photo["id"] not in event["data"]["media_errors"]


@pytest.mark.parametrize("refusal", [404, 401])
async def test_refusals_are_recorded_and_given_up(mms_hub: MmsHub, refusal: int) -> None:
    result = await mms_hub.text(MediaFile("image/png"), MediaFile("text/plain"))
    doomed_url = result.media_urls[0]
    if refusal == 404:
        # Deleted at Twilio before we fetched it.
        async with httpx.AsyncClient(auth=(ACCOUNT_SID, AUTH_TOKEN)) as http:
            assert (await http.delete(doomed_url + ".json")).status_code == 204
    else:
        # The auth token was rotated and the hub still has the old one.
        mms_hub.sandbox.auth_token = "rotated-" + AUTH_TOKEN
    event_id = (await mms_hub.event(result.sid))["id"]
    doomed, fine = await mms_hub.documents(event_id)
    now = utcnow()

    for attempt in range(1, MAX_ATTEMPTS + 1):
        with mms_hub.services.publisher.subscribe() as live:
            done = await fetch_round(mms_hub.services, now=now)
            _, published = live.queue.get_nowait() or ("", None)
        # A 401 refuses every media of the account; a 404 only the deleted one.
        assert done.failed == (1 if refusal == 404 else 2)
        event = await mms_hub.event(result.sid)
        entry = event["data"]["media_errors"][doomed["id"]]
        assert (entry["status"], entry["attempts"]) == (refusal, attempt)
        assert isinstance(published, StoredEvent) and published.data == event["data"]
        if attempt < MAX_ATTEMPTS:
            assert "gave_up_at" not in entry and entry["retry_at"] > entry["failed_at"]
            # Not again before it is due.
            assert (await fetch_round(mms_hub.services, now=now)).attempted == 0
        now += timedelta(hours=1)

    assert "retry_at" not in entry and entry["gave_up_at"] == entry["failed_at"]
    assert done.gave_up == (1 if refusal == 404 else 2)
    before = len(mms_hub.sandbox_seen)
    assert (await fetch_round(mms_hub.services, now=now + timedelta(days=7))).attempted == 0
    assert len(mms_hub.sandbox_seen) == before
    assert len([s for s in mms_hub.media_requests() if doomed_url.endswith(s.path)]) == 3

    [doomed, fine] = await mms_hub.documents(event_id)
    assert doomed["sha256"] is None
    missing = await mms_hub.api.get(f"/api/v1/documents/{doomed['id']}")
    assert missing.status_code == 404
    if refusal == 404:
        # The other media of the message came through on the first round.
        assert fine["sha256"] is not None and fine["id"] not in event["data"]["media_errors"]
    else:
        assert fine["sha256"] is None
        assert event["data"]["media_errors"][fine["id"]]["status"] == 401


async def test_a_file_over_the_mms_limit_is_refused(mms_hub: MmsHub, foreign: Foreign) -> None:
    at_limit = b"\x00" * MAX_MEDIA_BYTES
    foreign.streamed["/huge.bin"] = b"\x01" * (MAX_MEDIA_BYTES + 1)
    result = await mms_hub.text(
        MediaFile("video/mp4", b"\x02" * (MAX_MEDIA_BYTES + 1)),
        MediaFile("video/mp4", at_limit),
        urls=(f"{foreign.url}/huge.bin",),
    )
    done = await fetch_round(mms_hub.services)
    assert (done.attempted, done.fetched, done.failed, done.gave_up) == (3, 1, 2, 2)

    event = await mms_hub.event(result.sid)
    streamed, declared, fits = await mms_hub.documents(event["id"])
    errors = event["data"]["media_errors"]
    for refused in (streamed, declared):
        assert refused["sha256"] is None and refused["size"] == 0
        entry = errors[refused["id"]]
        assert entry["attempts"] == 1 and "gave_up_at" in entry
        assert "more than 5242880 bytes" in entry["error"]
    assert fits["sha256"] == hashlib.sha256(at_limit).hexdigest()
    assert fits["size"] == MAX_MEDIA_BYTES
    # Only the file that fits is kept: no partial or temporary file of the others.
    assert [p.name for p in mms_hub.stored_files()] == [fits["sha256"][2:]]
    # Given up at once: not fetched again.
    assert (await fetch_round(mms_hub.services, now=utcnow() + timedelta(days=1))).attempted == 0


async def test_network_errors_are_retried_next_round(mms_hub: MmsHub, free_port: int) -> None:
    url = f"http://127.0.0.1:{free_port}/late.png"
    result = await mms_hub.text(urls=(url,))
    now = utcnow()
    done = await fetch_round(mms_hub.services, now=now)
    assert (done.attempted, done.failed, done.gave_up) == (1, 1, 0)
    event = await mms_hub.event(result.sid)
    [doc] = await mms_hub.documents(event["id"])
    entry = event["data"]["media_errors"][doc["id"]]
    assert entry["error"] == "ConnectError" and entry["status"] is None
    assert "gave_up_at" not in entry

    late = Foreign(files={"/late.png": (b"\x89PNG late", "image/png")})
    async with serve(late.app(), port=free_port):
        done = await fetch_round(mms_hub.services, now=now + timedelta(minutes=1))
    assert (done.attempted, done.fetched) == (1, 1)
    assert late.at("/late.png") == [Seen("/late.png", None)]
    event = await mms_hub.event(result.sid)
    assert "media_errors" not in event["data"]
    assert [a["size"] for a in event["attachments"]] == [len(b"\x89PNG late")]


async def test_the_worker_runs_the_fetcher_when_twilio_is_on(mms_hub: MmsHub) -> None:
    jobs, _ = channel_jobs(mms_hub.services)
    job, every = jobs["mms-media"]
    assert job is fetch_media and 0 < every <= 60
