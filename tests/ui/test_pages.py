"""Console pages over HTTP (SQLite and PostgreSQL): search, the 360 view and its edits,
merge and undo, the composer's refusals, safe email, the sandbox page."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from hub.app import create_app
from hub.auth import add_agent
from tests.hub.conftest import hub_settings
from tests.ui.test_sessions import BASE, PASSWORD, hidden_token, log_in
from timeline import consent
from timeline.events import Channel, Direction, Event, Identity, IdentityKind, Kind, utcnow
from timeline.ingest import ingest_batch

TWILIO = {
    "twilio_account_sid": "AC" + "1" * 32,
    "twilio_auth_token": "2" * 32,
    "twilio_numbers": ("+14155550199",),
    "twilio_api_base": "http://127.0.0.1:9",
}


@pytest.fixture
async def console(database_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A logged-in console client (a supervisor) of a hub with SMS configured."""
    app: Starlette = create_app(
        hub_settings(database_url, tmp_path / "files", **TWILIO), run_workers=False
    )
    async with app.router.lifespan_context(app):
        async with app.state.services.db.write() as conn:
            await add_agent(conn, email="ada@hub.example", role="supervisor", password=PASSWORD)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=BASE, headers={"Origin": BASE}
        ) as http:
            http.app = app  # type: ignore[attr-defined]
            assert (await log_in(http)).status_code == 303
            yield http


async def customer(http: httpx.AsyncClient, name: str, phone: str, text: str) -> str:
    """A customer made by an inbound SMS; their id."""
    app: Starlette = http.app  # type: ignore[attr-defined]
    async with app.state.services.db.write() as conn:
        result = await ingest_batch(
            conn,
            [
                Event(
                    channel=Channel.SMS,
                    kind=Kind.MESSAGE,
                    direction=Direction.INBOUND,
                    occurred_at=utcnow(),
                    external_id="SM" + phone[-6:] * 4,
                    status="received",
                    text=text,
                    sender=Identity(IdentityKind.PHONE, phone),
                    recipient=Identity(IdentityKind.PHONE, "+14155550199"),
                )
            ],
            region="US",
        )
        event = result.outcomes[0].event
        assert event is not None
        from timeline import customers

        await customers.update(conn, event.customer_id, name=name)
        return event.customer_id


async def post(http: httpx.AsyncClient, path: str, **data: str) -> httpx.Response:
    token = hidden_token((await http.get("/ui/")).text)
    return await http.post(path, data={"csrf_token": token, **data})


async def test_search_by_phone_in_any_format_email_and_words(
    console: httpx.AsyncClient,
) -> None:
    cid = await customer(console, "Grace Hopper", "+14155550123", "my invoice is wrong")
    for q in ("(415) 555-0123", "415.555.0123", "Hopper", "invoice"):
        found = await console.get("/ui/search", params={"q": q})
        assert f"/ui/customers/{cid}" in found.text, q
    none = await console.get("/ui/search", params={"q": "nobody-at-all"})
    assert "No customer matches" in none.text


async def test_edit_identities_attributes_and_merge_with_undo(
    console: httpx.AsyncClient,
) -> None:
    grace = await customer(console, "Grace Hopper", "+14155550123", "hello")
    await customer(console, "G. Hopper", "+14155550124", "second phone")
    page = f"/ui/customers/{grace}"
    added = await post(
        console, f"{page}/identities", action="add", kind="email", value="Grace@Navy.MIL"
    )
    assert "Added Grace@navy.mil" in added.text
    attr = await post(console, f"{page}/attributes", key="plan", value="gold")
    assert re.search(r"<dt>plan</dt><dd>gold</dd>", attr.text)
    merged = await post(console, f"{page}/merge", other="(415) 555-0124")
    assert "Merged" in merged.text and "+14155550124" in merged.text
    assert "second phone" in merged.text
    merge_id = re.search(r'action="/ui/merges/([^/]+)/undo"', merged.text)
    assert merge_id
    undone = await post(console, f"/ui/merges/{merge_id.group(1)}/undo")
    assert undone.status_code == 303
    again = await console.get(page)
    assert "+14155550124" not in again.text and "second phone" not in again.text
    removed = await post(
        console, f"{page}/identities", action="remove", kind="email", value="Grace@navy.mil"
    )
    assert "Removed Grace@navy.mil" in removed.text


async def test_the_composer_queues_and_says_why_a_send_is_refused(
    console: httpx.AsyncClient,
) -> None:
    cid = await customer(console, "Grace Hopper", "+14155550123", "hi")
    page = await console.get(f"/ui/customers/{cid}")
    assert 'id="ch-sms" name="channel" value="sms" checked' in page.text
    sent = await post(console, f"/ui/customers/{cid}/send", channel="sms", text="On our way")
    assert "SMS queued" in sent.text and "queued" in sent.text
    note = await post(console, f"/ui/customers/{cid}/send", channel="note", text="VIP")
    assert "Note added" in note.text
    email = await post(console, f"/ui/customers/{cid}/send", channel="email", text="x")
    assert "email channel is not configured" in email.text
    app: Starlette = console.app  # type: ignore[attr-defined]
    async with app.state.services.db.write() as conn:
        stop = consent.change(
            Channel.SMS,
            consent.OPTED_OUT,
            occurred_at=utcnow(),
            external_id="SMstop" + "0" * 28,
            cause="STOP",
            customer_id=cid,
        )
        await ingest_batch(conn, [stop], region="US")
    refused = await post(console, f"/ui/customers/{cid}/send", channel="sms", text="Sale!")
    assert "Not sent" in refused.text and "opted out" in refused.text
    timeline = await console.get(f"/ui/customers/{cid}")
    assert "On our way" in timeline.text and "VIP" in timeline.text
    assert "Sale!" not in timeline.text


async def test_email_html_is_sanitized_and_framed(console: httpx.AsyncClient) -> None:
    cid = await customer(console, "Grace Hopper", "+14155550123", "hi")
    app: Starlette = console.app  # type: ignore[attr-defined]
    async with app.state.services.db.write() as conn:
        result = await ingest_batch(
            conn,
            [
                Event(
                    channel=Channel.EMAIL,
                    kind=Kind.MESSAGE,
                    direction=Direction.INBOUND,
                    occurred_at=utcnow(),
                    external_id="<m1@x.test>",
                    subject="Hi",
                    html='<p onclick="x()">Hi</p><script>alert(1)</script>'
                    '<img src="https://tracker.test/p.gif">',
                    thread_key="<m1@x.test>",
                    customer_id=cid,
                )
            ],
            region="US",
        )
    event = result.outcomes[0].event
    assert event is not None
    page = await console.get(f"/ui/customers/{cid}")
    frame = re.search(r'<iframe class="mail" sandbox[^>]*srcdoc="([^"]*)"', page.text)
    assert frame, page.text
    srcdoc = frame.group(1)
    assert "script" not in srcdoc and "onclick" not in srcdoc and "tracker.test" not in srcdoc
    assert "default-src 'none'; img-src data:" in html.unescape(srcdoc)
    assert "Show 1 remote image" in page.text
    body = await console.get(f"/ui/events/{event.id}/body")
    assert "tracker.test" in body.text and "<script" not in body.text
    csp = body.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "img-src data: https:" in csp and "sandbox" in csp


async def test_the_sandbox_page_is_only_in_demo_mode(console: httpx.AsyncClient) -> None:
    assert (await console.get("/ui/sandbox")).status_code == 404
