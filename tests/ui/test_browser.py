"""The console in a real Chromium: login, search, the timeline, sending, screen pops, email.

With ``COMMHUB_SCREENSHOTS=1`` also takes the screenshots of docs/img (the README's
console section); without it nothing in the tree is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from channels.twilio.sandbox import serve
from tests.ui.conftest import DOCS_IMG, EMAIL, OUR_NUMBER, PASSWORD, PHONE, RunningHub
from timeline.events import Channel, Direction, Event, Identity, IdentityKind, Kind, utcnow
from timeline.ingest import ingest_batch

HubFactory = Callable[..., Any]


@contextlib.asynccontextmanager
async def new_page(browser: Any, hub: RunningHub) -> AsyncIterator[Any]:
    """A page in a fresh browser context, closed before the hub stops (its live stream
    would otherwise keep the server's graceful shutdown waiting)."""
    context = await browser.new_context(viewport={"width": 1366, "height": 800})
    try:
        page = await context.new_page()
        page.set_default_timeout(10_000)
        yield page
    finally:
        await context.close()


async def log_in(page: Any, hub: RunningHub, password: str = PASSWORD) -> None:
    await page.goto(hub.url + "/ui/login")
    await page.get_by_label("Email").fill(EMAIL)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()


async def shot(page: Any, name: str) -> None:
    """Rewrite docs/img/NAME.png, only when COMMHUB_SCREENSHOTS=1 asks for it (a normal
    run must leave the tree clean)."""
    if os.environ.get("COMMHUB_SCREENSHOTS") != "1":
        return
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(DOCS_IMG / f"{name}.png"))


async def test_login_search_and_endless_timeline(browser: Any, hub_factory: HubFactory) -> None:
    async with hub_factory() as hub:
        async with new_page(browser, hub) as page:
            await log_in(page, hub, "wrong password")
            await page.wait_for_selector("#login-error")
            assert "Wrong email or password" in await page.inner_text("#login-error")
            await page.get_by_label("Email").fill(EMAIL)
            await shot(page, "login")
            await log_in(page, hub)
            await page.wait_for_url(hub.url + "/ui/")
            await page.get_by_role("link", name="Change password").click()
            await page.wait_for_url(hub.url + "/ui/account/password")
            await page.go_back()
            await page.get_by_label("Name, phone (any format), email").fill("(415) 555-0123")
            link = page.get_by_role("link", name="Grace Hopper")
            await link.wait_for()
            await shot(page, "search")
            await link.click()
            await page.wait_for_url(f"{hub.url}/ui/customers/{hub.customer_id}")
            assert await page.locator("#timeline > li.event").count() == 30
            assert "Message number 69" in await page.inner_text("#timeline > li.event >> nth=0")
            await shot(page, "profile")
            for _ in range(10):
                await page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
                if await page.locator("#timeline > li.event").count() == 70:
                    break
                await page.wait_for_timeout(200)
            assert await page.locator("#timeline > li.event").count() == 70
            assert await page.locator("#timeline li.more").count() == 0
            last = await page.inner_text("#timeline > li.event >> nth=-1")
            assert "Message number 0" in last


async def test_send_an_sms_and_watch_it_delivered(browser: Any, hub_factory: HubFactory) -> None:
    async with hub_factory(callback_delay=0.3) as hub:
        async with new_page(browser, hub) as page:
            await log_in(page, hub)
            await page.goto(f"{hub.url}/ui/customers/{hub.customer_id}")
            await page.locator("body[data-live='on']").wait_for(state="attached")
            assert await page.get_by_label("SMS").is_checked()  # the channel they last used
            await page.get_by_label("Message", exact=True).fill("Your order ships today.")
            await page.get_by_role("button", name="Send").click()
            await page.wait_for_selector("#composer-status .ok")
            await shot(page, "composer")
            item = page.locator("#timeline > li.event", has_text="Your order ships today.")
            await item.wait_for()
            status = item.locator(".status")
            seen = {await status.inner_text()}
            deadline = time.monotonic() + 10
            while "delivered" not in seen and time.monotonic() < deadline:
                await page.wait_for_timeout(50)
                seen.add((await item.locator(".status").inner_text()).strip())
            assert "delivered" in seen, seen
            assert seen & {"queued", "sent", "sending"}, seen  # it moved, live
            assert "delivered" in await page.inner_text("#composer-status")
            log = hub.sandbox.phone_log(PHONE)
            assert log[-1]["body"] == "Your order ships today."


async def test_an_incoming_call_pops_and_survives_a_reload(
    browser: Any, hub_factory: HubFactory
) -> None:
    async with hub_factory(callback_delay=4.0) as hub:
        async with new_page(browser, hub) as page:
            await log_in(page, hub)
            await page.goto(f"{hub.url}/ui/customers/{hub.customer_id}")
            await page.locator("body[data-live='on']").wait_for(state="attached")
            started = time.monotonic()
            call = asyncio.create_task(hub.sandbox.call_hub(PHONE, OUR_NUMBER, answer=False))
            banner = page.locator("#callbar article.call")
            await banner.wait_for(timeout=1000)
            assert time.monotonic() - started < 1.0
            await call
            text = await banner.inner_text()
            assert "Grace Hopper" in text and PHONE in text and "Message number 69" in text
            await shot(page, "screen-pop")
            await page.reload()
            await page.locator("#callbar article.call", has_text="Grace Hopper").wait_for(
                timeout=2000
            )
            await page.goto(hub.url + "/ui/calls")
            assert "Grace Hopper" in await page.inner_text("main")


async def test_inbound_html_email_runs_nothing_and_loads_nothing(
    browser: Any, hub_factory: HubFactory
) -> None:
    hits: list[str] = []

    async def remote(request: Request) -> Response:
        hits.append(request.url.path)
        return Response(b"GIF89a", media_type="image/gif")

    tracker = Starlette(routes=[Route("/{path:path}", remote)])
    async with serve(tracker) as remote_url, hub_factory() as hub:
        html = (
            "<p>Hello <b>agent</b></p>"
            f"<script>window.top.pwned = 1; fetch('{remote_url}/script')</script>"
            f'<img src="{remote_url}/pixel.gif" alt="tracker">'
            f'<img src="x" onerror="fetch(\'{remote_url}/onerror\')">'
            f"<style>body {{ background: url('{remote_url}/css') }}</style>"
            f"<a href=\"javascript:fetch('{remote_url}/js')\">click</a>"
        )
        services = hub.app.state.services
        async with services.db.write() as conn:
            await ingest_batch(
                conn,
                [
                    Event(
                        channel=Channel.EMAIL,
                        kind=Kind.MESSAGE,
                        direction=Direction.INBOUND,
                        occurred_at=utcnow(),
                        external_id="<evil@example.test>",
                        status="received",
                        subject="Totally harmless",
                        text="Hello agent",
                        html=html,
                        thread_key="<evil@example.test>",
                        sender=Identity(IdentityKind.PHONE, PHONE),
                        recipient=Identity(IdentityKind.EMAIL, "support@hub.example"),
                    )
                ],
                region="US",
            )
        async with new_page(browser, hub) as page:
            page_errors: list[str] = []
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            await log_in(page, hub)
            await page.goto(f"{hub.url}/ui/customers/{hub.customer_id}?channel=email")
            frame_el = page.locator("iframe.mail").first
            await frame_el.wait_for()
            assert await frame_el.get_attribute("sandbox") == ""
            frame = await (await frame_el.element_handle()).content_frame()
            assert frame is not None
            await frame.wait_for_selector("b")
            assert "agent" in await frame.inner_text("body")
            assert await frame.locator("script").count() == 0
            await page.get_by_role("button", name=re.compile("remote image")).click()
            await page.locator("iframe.mail[src]").wait_for()
            await page.wait_for_timeout(500)
            assert await page.evaluate("typeof window.pwned") == "undefined"
            assert hits == [], hits


async def test_missing_csrf_token_is_refused_in_the_browser(
    browser: Any, hub_factory: HubFactory
) -> None:
    async with hub_factory() as hub:
        async with new_page(browser, hub) as page:
            await log_in(page, hub)
            await page.wait_for_url(hub.url + "/ui/")
            status = await page.evaluate(
                """async (id) => (await fetch('/ui/customers/' + id + '/send', {method: 'POST',
                     headers: {'Content-Type': 'application/x-www-form-urlencoded'},
                     body: 'channel=note&text=forged'})).status""",
                hub.customer_id,
            )
            assert status == 403
            cookies = {c["name"]: c["value"] for c in await page.context.cookies()}
            async with httpx.AsyncClient(cookies=cookies) as other:
                forged = await other.post(
                    f"{hub.url}/ui/customers/{hub.customer_id}/send",
                    data={"channel": "note", "text": "forged", "csrf_token": "guess"},
                    headers={"Origin": "https://evil.test"},
                )
                assert forged.status_code == 403
            await page.goto(f"{hub.url}/ui/customers/{hub.customer_id}")
            assert "forged" not in await page.inner_text("#timeline")


async def test_a_recorded_call_plays_in_the_console(browser: Any, hub_factory: HubFactory) -> None:
    async with hub_factory(
        twilio_voice_clients=("alice",), twilio_voice_record=True, twilio_voice_timeout=15
    ) as hub:
        await hub.sandbox.call_hub(PHONE, OUR_NUMBER)
        await hub.sandbox.settle()
        async with new_page(browser, hub) as page:
            await log_in(page, hub)
            await page.wait_for_url(hub.url + "/ui/")
            await page.goto(f"{hub.url}/ui/customers/{hub.customer_id}?channel=voice")
            player = page.get_by_label("Recording of the call")
            src = await player.get_attribute("src")
            assert src is not None and src.startswith("/ui/calls/")  # the session's URL
            # The browser's own request (session cookie, no token) gets the audio, which
            # Chromium decodes: the player knows the recording's length.
            await player.evaluate("a => { a.preload = 'auto'; a.load(); }")
            await page.wait_for_function(
                "() => document.querySelector('audio').duration > 0", timeout=5000
            )
            duration = await player.evaluate("a => a.duration")
            (sid,) = hub.sandbox.voice.recordings
            assert duration > 1, duration
            answer = await page.evaluate(
                "async (u) => { const r = await fetch(u, {headers: {Range: 'bytes=0-43'}});"
                " return [r.status, r.headers.get('content-type'),"
                " (await r.arrayBuffer()).byteLength]; }",
                src,
            )
            assert answer == [206, "audio/x-wav", 44], answer
            assert hub.sandbox.voice.audio[sid][:4] == b"RIFF"
