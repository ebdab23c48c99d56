"""Twilio's SMS webhooks on the running hub: signatures, repeats, order, load, bad input.

RELIABILITY.md, Twilio 1-5, and "nothing half-written" for malformed requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from channels.twilio.forms import encode_form
from channels.twilio.signature import SIGNATURE_HEADER, public_url_for, sign
from tests.hub.sms.conftest import (
    CUSTOMER,
    OUR_NUMBER,
    SMS_PATH,
    STATUS_PATH,
    SmsHub,
    StartHub,
    inbound_form,
)
from timeline.schema import consents, customers, documents, events, outbox

# Twilio's documented example (https://www.twilio.com/docs/usage/webhooks/webhooks-security).
DOC_TOKEN = "12345"
DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOC_PARAMS = [
    ("CallSid", "CA1234567890ABCDE"),
    ("Caller", "+12349013030"),
    ("Digits", "1234"),
    ("From", "+12349013030"),
    ("To", "+18005551212"),
]
DOC_SIGNATURE = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


async def _nothing_stored(hub: SmsHub) -> None:
    for table in (events, customers, consents, documents, outbox):
        assert await hub.count(table) == 0, table.name


def _error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


# -- 1. signatures -----------------------------------------------------------------------


async def test_1_published_vector_then_forgeries_are_refused(start_hub: StartHub) -> None:
    # The signer the hub verifies with reproduces Twilio's published vector ...
    assert sign(DOC_TOKEN, DOC_URL, DOC_PARAMS) == DOC_SIGNATURE
    # ... and the hub, configured with that token, takes a signed SMS and refuses the rest.
    async with start_hub(auth_token=DOC_TOKEN) as hub:
        form = inbound_form("SM" + "a" * 32, CUSTOMER, OUR_NUMBER, "Hello")
        url = public_url_for(hub.settings.public_url, SMS_PATH)

        tampered = [(k, "Hello!" if k == "Body" else v) for k, v in form]
        refused = {
            "tampered value": await hub.post_signed(SMS_PATH, form, send_params=tampered),
            "added field": await hub.post_signed(
                SMS_PATH, form, send_params=[*form, ("Extra", "1")]
            ),
            "another host": await hub.post_signed(
                SMS_PATH, form, sign_base="http://evil.example.com"
            ),
            "another token": await hub.post_signed(SMS_PATH, form, token="54321"),
            "missing header": await hub.post_signed(SMS_PATH, form, signature=None),
            "empty header": await hub.post_signed(SMS_PATH, form, signature=""),
            "garbage header": await hub.post_signed(SMS_PATH, form, signature="not base64 !"),
            "signed for the status path": await hub.http.post(
                SMS_PATH,
                content=encode_form(form),
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    SIGNATURE_HEADER: sign(
                        DOC_TOKEN, public_url_for(hub.settings.public_url, STATUS_PATH), form
                    ),
                },
            ),
        }
        # JSON bodies: only the URL is signed and bodySHA256 vouches for the body.
        body = json.dumps({"MessageSid": "SM" + "b" * 32, "Body": "hi"}).encode()
        wrong_hash = hashlib.sha256(body + b" ").hexdigest()
        query = f"bodySHA256={wrong_hash}"
        refused["bad bodySHA256"] = await hub.http.post(
            f"{SMS_PATH}?{query}",
            content=body,
            headers={
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(DOC_TOKEN, f"{url}?{query}"),
            },
        )
        refused["json without bodySHA256"] = await hub.http.post(
            SMS_PATH,
            content=body,
            headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(DOC_TOKEN, url)},
        )
        for case, response in refused.items():
            assert response.status_code == 403, (case, response.text)
            assert _error_code(response) == "forbidden", case
        await _nothing_stored(hub)

        # A JSON body whose hash and signature are right passes the check (no 403), but
        # an SMS webhook is a form: 400, still nothing stored.
        good_hash = hashlib.sha256(body).hexdigest()
        query = f"bodySHA256={good_hash}"
        json_ok = await hub.http.post(
            f"{SMS_PATH}?{query}",
            content=body,
            headers={
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(DOC_TOKEN, f"{url}?{query}"),
            },
        )
        assert json_ok.status_code == 400, json_ok.text
        await _nothing_stored(hub)

        accepted = await hub.post_signed(SMS_PATH, form)
        assert accepted.status_code == 200, accepted.text
        assert accepted.headers["content-type"].startswith("text/xml")
        assert accepted.text.endswith("<Response/>")
        assert await hub.count(events) == 1
        assert await hub.count(customers) == 1


# -- 2. behind a proxy -------------------------------------------------------------------


async def test_2_signatures_are_checked_against_the_public_url(start_hub: StartHub) -> None:
    public_url = "https://hub.example.com"
    async with start_hub(public_url=public_url) as hub:
        assert hub.url.startswith("http://127.0.0.1:")
        form = inbound_form("SM" + "c" * 32, CUSTOMER, OUR_NUMBER, "via the proxy")
        internal = await hub.post_signed(SMS_PATH, form, sign_base=hub.url)
        assert internal.status_code == 403
        assert await hub.count(events) == 0

        public = await hub.post_signed(SMS_PATH, form, sign_base=public_url)
        assert public.status_code == 200, public.text
        assert await hub.count(events) == 1
        # Twilio may sign the URL with the scheme's default port.
        form = inbound_form("SM" + "d" * 32, CUSTOMER, OUR_NUMBER, "port 443")
        with_port = await hub.post_signed(SMS_PATH, form, sign_base=f"{public_url}:443")
        assert with_port.status_code == 200, with_port.text

        # The sandbox, like Twilio behind the proxy, signs for the public URL.
        texted = await hub.sandbox.text_hub(CUSTOMER, OUR_NUMBER, "and again")
        assert texted.status_code == 200
        assert await hub.count(events) == 3


@pytest.mark.parametrize("api_database", ["sqlite"], indirect=True)
async def test_2_a_public_url_with_a_path_prefix(start_hub: StartHub) -> None:
    public_url = "https://example.com/hub"
    async with start_hub(public_url=public_url) as hub:
        form = inbound_form("SM" + "c" * 32, CUSTOMER, OUR_NUMBER, "via the proxy")
        assert (await hub.post_signed(SMS_PATH, form, sign_base=hub.url)).status_code == 403
        stripped = await hub.post_signed(SMS_PATH, form, sign_base="https://example.com")
        assert stripped.status_code == 403
        assert (await hub.post_signed(SMS_PATH, form, sign_base=public_url)).status_code == 200
        assert await hub.count(events) == 1


# -- 3. the same webhook three times at once ---------------------------------------------


async def test_3_same_message_sid_three_times_at_once_is_stored_once(hub: SmsHub) -> None:
    sid = "SM" + "e" * 32
    answers = await asyncio.gather(*(hub.inbound(sid, "Is my order ready?") for _ in range(3)))
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert await hub.count(events, events.c.external_id == sid) == 1
    assert await hub.count(events) == 1
    assert await hub.count(customers) == 1
    # And a fourth, later (Twilio's retry after a timeout), changes nothing either.
    assert (await hub.inbound(sid, "Is my order ready?")).status_code == 200
    assert await hub.count(events) == 1


async def test_3_a_repeated_stop_makes_one_consent_event(hub: SmsHub) -> None:
    sid = "SM" + "f" * 32
    answers = await asyncio.gather(*(hub.inbound(sid, "STOP") for _ in range(3)))
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert await hub.count(events, events.c.kind == "consent") == 1
    assert await hub.count(events, events.c.kind == "message") == 1


# -- 4. status callbacks out of order ----------------------------------------------------


async def _sent_message(hub: SmsHub, customer_id: str, text: str) -> tuple[str, str]:
    """Queue and send a message; (event id, MessageSid). The sandbox calls nothing back."""
    queued = await hub.send(customer_id, text)
    assert queued.status_code == 202, queued.text
    event_id = queued.json()["id"]
    assert await hub.sender().run_once() == 1
    event = await hub.event(event_id)
    assert event["status"] == "queued"
    sid: str = event["external_id"]
    assert sid
    return event_id, sid


async def test_4_callbacks_in_any_order_end_at_the_furthest_status(start_hub: StartHub) -> None:
    silent = ("sent", "delivered", "undelivered", "failed")
    async with start_hub(drop_statuses=silent) as hub:
        customer_id = await hub.create_customer()

        event_id, sid = await _sent_message(hub, customer_id, "first")
        for status in ("delivered", "sent", "queued"):
            answer = await hub.status(sid, status, event_id=event_id)
            assert answer.status_code == 200, answer.text
        assert (await hub.event(event_id))["status"] == "delivered"

        event_id, sid = await _sent_message(hub, customer_id, "second")
        assert (
            await hub.status(sid, "undelivered", event_id=event_id, error_code=30005)
        ).is_success
        assert (await hub.status(sid, "sent", event_id=event_id)).is_success
        assert (await hub.status(sid, "delivered", event_id=event_id)).is_success
        event = await hub.event(event_id)
        assert event["status"] == "undelivered"
        assert event["data"]["ErrorCode"] == 30005
        # Status updates never make events of their own.
        assert await hub.count(events, events.c.customer_id == customer_id) == 2


async def test_4_the_sandbox_calling_back_last_first(start_hub: StartHub) -> None:
    async with start_hub(out_of_order=True) as hub:
        good = await hub.create_customer(["+14155550111"], name="Good")
        unknown = await hub.create_customer(["+14155550005"], name="Unknown handset")
        ok = (await hub.send(good, "see you")).json()["id"]
        bad = (await hub.send(unknown, "see you")).json()["id"]
        assert await hub.sender().run_once() == 2
        await hub.sandbox.settle()
        # The sandbox really sent them last first.
        by_sid: dict[str, list[str]] = {}
        for callback in hub.sandbox.callbacks:
            params = dict(callback.params)
            by_sid.setdefault(params["MessageSid"], []).append(params["MessageStatus"])
            assert callback.status_code == 200
        assert sorted(by_sid.values()) == [["delivered", "sent"], ["undelivered", "sent"]]
        assert (await hub.event(ok))["status"] == "delivered"
        failed = await hub.event(bad)
        assert failed["status"] == "undelivered"
        assert failed["data"]["ErrorCode"] == 30005


# -- 5. answers while the database is busy -----------------------------------------------

#: The load generator: another process (its own CPU), so the hub's event loop is not
#: also the client's. Reads [url, [[body, signature], ...]] on stdin, says "go" on
#: stdout, fires every request at once and prints [[monotonic answer time, status], ...].
LOAD_SCRIPT = """
import asyncio, json, sys, time
import httpx

async def main():
    url, requests = json.loads(sys.stdin.read())
    limits = httpx.Limits(max_connections=len(requests) + 10)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        async def one(body, signature):
            response = await client.post(url, content=body.encode(), headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": signature,
            })
            return [time.monotonic(), response.status_code]
        print("go", time.monotonic(), flush=True)
        answers = await asyncio.gather(*(one(b, s) for b, s in requests))
    print(json.dumps(answers), flush=True)

asyncio.run(main())
"""


async def test_5_a_webhook_answers_within_a_second_while_200_others_are_ingested(
    hub: SmsHub,
) -> None:
    """200 first-contact webhooks (each a new customer) are fired at once from another
    process (so the hub's event loop is not also the client's); meanwhile a probe webhook
    is sent every 200 ms and each must be answered (after its commit) within 1 s.

    Measured here (2 cores shared with other work, load average 6-9): the 200 were all
    answered within 2-7 s (the load generator itself is starved on such a machine); the
    40-60 probes sent meanwhile were answered in 6-910 ms, the group writer committing in
    40-60 transactions. This is a behaviour test with a generous bound, not a benchmark
    (bench/ measures rates with wrk).
    """
    url = public_url_for(hub.settings.public_url, SMS_PATH)
    token = hub.settings.twilio_auth_token or ""
    requests = []
    for i in range(200):
        form = inbound_form(f"SM{i:032x}", f"+1415555{2000 + i:04d}", OUR_NUMBER, f"load {i}")
        requests.append([encode_form(form).decode(), sign(token, url, form)])
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LOAD_SCRIPT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(json.dumps([f"{hub.url}{SMS_PATH}", requests]).encode())
    process.stdin.write_eof()
    go = await asyncio.wait_for(process.stdout.readline(), 20)
    assert go.startswith(b"go")
    load_began = float(go.split()[1])
    finished = asyncio.ensure_future(asyncio.wait_for(process.stdout.readline(), 60))
    probes: list[tuple[float, float, int]] = []  # (sent, seconds, status)

    async def probe(n: int) -> None:
        sent = time.monotonic()
        response = await hub.inbound(f"SMprobe{n:026d}", f"probe {n}", from_=CUSTOMER)
        probes.append((sent, time.monotonic() - sent, response.status_code))

    # A probe every 200 ms for as long as the load runs.
    tasks = []
    while not finished.done():
        tasks.append(asyncio.create_task(probe(len(tasks))))
        await asyncio.wait([finished], timeout=0.2)
    await asyncio.gather(*tasks)
    answers = json.loads(await finished)
    assert await process.wait() == 0
    assert [status for _, status in answers] == [200] * 200
    assert {status for _, _, status in probes} == {200}
    load_ended = max(at for at, _ in answers)
    during = [seconds for sent, seconds, _ in probes if load_began <= sent <= load_ended]
    print(  # the measurement, shown with -s
        f"load of 200: answered within {(load_ended - load_began) * 1000:.0f} ms; "
        f"{len(during)} probes sent during it, answered in "
        f"{min(during) * 1000:.0f}-{max(during) * 1000:.0f} ms; "
        f"{hub.services.writer.batches} group commits"
    )
    assert len(during) >= 2
    assert max(seconds for _, seconds, _ in probes) < 1.0
    assert await hub.count(events) == 200 + len(probes)
    assert await hub.count(customers) == 201


# -- bad input: a clear 4xx or a logged 200, never a 500, nothing half-written ------------


@pytest.fixture
def twilio_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="hub.twilio_webhooks"):
        yield caplog


def _without(form: list[tuple[str, str]], key: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in form if k != key]


async def test_malformed_inbound_sms_is_400_naming_the_field(hub: SmsHub) -> None:
    form = inbound_form("SM" + "1" * 32, CUSTOMER, OUR_NUMBER, "hello")
    cases = {
        "From": _without(form, "From"),
        "MessageSid": _without(form, "MessageSid"),
        "NumMedia": inbound_form("SM1", CUSTOMER, OUR_NUMBER, "x", NumMedia="two"),
        "NumMedia ": inbound_form("SM1", CUSTOMER, OUR_NUMBER, "x", NumMedia="-1"),
        "NumMedia  ": inbound_form("SM1", CUSTOMER, OUR_NUMBER, "x", NumMedia="11"),
        "MediaUrl0": inbound_form("SM1", CUSTOMER, OUR_NUMBER, "x", NumMedia="1"),
        "MediaUrl0 ": [
            *inbound_form("SM1", CUSTOMER, OUR_NUMBER, "x", NumMedia="1"),
            ("MediaUrl0", "javascript:alert(1)"),
        ],
        "From ": inbound_form("SM1", "whatsapp:+14155550100", OUR_NUMBER, "x"),
        "To": _without(form, "To"),
    }
    for field, broken in cases.items():
        response = await hub.post_signed(SMS_PATH, broken)
        assert response.status_code == 400, (field, response.text)
        assert _error_code(response) == "bad_payload"
        assert response.json()["error"]["message"].startswith(field.strip()), field
    await _nothing_stored(hub)


async def test_a_2mb_body_is_413(hub: SmsHub) -> None:
    form = inbound_form("SM" + "2" * 32, CUSTOMER, OUR_NUMBER, "x" * (2 * 1024 * 1024))
    body = encode_form(form)
    url = public_url_for(hub.settings.public_url, SMS_PATH)
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        SIGNATURE_HEADER: sign(hub.settings.twilio_auth_token or "", url, form),
    }

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    for content in (body, chunked()):  # with a Content-Length, then without one
        try:
            response = await hub.http.post(SMS_PATH, content=content, headers=headers)
        except httpx.TransportError as exc:  # pragma: no cover
            pytest.fail(f"the hub dropped the connection instead of answering 413: {exc!r}")
        assert response.status_code == 413, response.text
        assert _error_code(response) == "too_large"
    await _nothing_stored(hub)


async def test_a_status_callback_for_an_unknown_message_is_logged_and_200(
    hub: SmsHub, twilio_log: pytest.LogCaptureFixture
) -> None:
    sid = "SM" + "3" * 32
    response = await hub.status(sid, "delivered")
    assert response.status_code == 200
    assert response.content == b""
    await _nothing_stored(hub)
    assert any(
        "unknown message" in r.getMessage() and sid in r.getMessage() for r in twilio_log.records
    )
    # With an event id that is not ours either.
    response = await hub.status(sid, "delivered", event_id="nosuchevent")
    assert response.status_code == 200
    await _nothing_stored(hub)


async def test_malformed_status_callbacks_are_400(hub: SmsHub) -> None:
    sid = "SM" + "4" * 32
    cases = {
        "no MessageStatus": [("MessageSid", sid), ("AccountSid", "AC1")],
        "no MessageSid": [("MessageStatus", "delivered")],
        "ErrorCode not a number": [
            ("MessageSid", sid),
            ("MessageStatus", "failed"),
            ("ErrorCode", "x"),
        ],
        "status not a word": [("MessageSid", sid), ("MessageStatus", "<b>")],
        "sid not a sid": [("MessageSid", "SM 1; DROP"), ("MessageStatus", "sent")],
    }
    for case, params in cases.items():
        response = await hub.post_signed(STATUS_PATH, params)
        assert response.status_code == 400, (case, response.text)
        assert _error_code(response) == "bad_payload", case
    await _nothing_stored(hub)


async def test_requests_of_other_shapes_are_4xx(hub: SmsHub) -> None:
    form = inbound_form("SM" + "5" * 32, CUSTOMER, OUR_NUMBER, "multipart")
    url = public_url_for(hub.settings.public_url, SMS_PATH)
    signature = sign(hub.settings.twilio_auth_token or "", url, form)
    answers = {
        # multipart/form-data signed over the logical fields: Twilio never sends it.
        "multipart": await hub.http.post(
            SMS_PATH,
            data=dict(form),
            files={"x": ("a.txt", b"a")},
            headers={SIGNATURE_HEADER: signature},
        ),
        "text/plain": await hub.http.post(
            SMS_PATH,
            content=b"From +14155550100: hello",
            headers={"Content-Type": "text/plain", SIGNATURE_HEADER: signature},
        ),
        "empty signed form": await hub.post_signed(SMS_PATH, []),
        "GET": await hub.http.get(SMS_PATH),
        "GET status": await hub.http.get(STATUS_PATH),
    }
    for case, response in answers.items():
        assert 400 <= response.status_code < 500, (case, response.text)
    assert answers["empty signed form"].status_code == 400
    assert answers["GET"].status_code == 405
    await _nothing_stored(hub)


async def test_a_body_that_is_not_utf8_is_a_4xx(hub: SmsHub) -> None:
    response = await hub.http.post(
        SMS_PATH,
        content=b"MessageSid=SM1&From=%2B14155550100&Body=\xff\xfe",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            SIGNATURE_HEADER: "AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        },
    )
    assert 400 <= response.status_code < 500, response.text
    await _nothing_stored(hub)
