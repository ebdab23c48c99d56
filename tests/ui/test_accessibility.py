"""Keyboard use and screen-reader labels of the console, in a real Chromium.

Every form control of every page has an accessible name; the whole path from login to a
sent message works from the keyboard alone, in a sensible focus order; the call bar is an
assertive live region that stays in the accessibility tree while empty, so a banner added
to it is read out; new events on the open timeline are announced in the status line.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.ui.conftest import EMAIL, OUR_NUMBER, PASSWORD, PHONE
from tests.ui.test_browser import HubFactory, log_in, new_page

#: Controls without an accessible name: no <label>, aria-label(ledby) or title, and for a
#: button no text. Hidden inputs are not controls a person reaches.
UNLABELED = """() => Array.from(document.querySelectorAll(
    'input:not([type=hidden]), select, textarea, button, iframe, audio, [tabindex]'))
  .filter(el => el.tagName !== 'MAIN')
  .filter(el => !((el.labels && el.labels.length) || el.getAttribute('aria-label')
      || el.getAttribute('aria-labelledby') || el.getAttribute('title')
      || (el.tagName === 'BUTTON' && el.textContent.trim())))
  .map(el => el.outerHTML.slice(0, 160))"""

#: What has the focus: its id, else its tag and text.
FOCUSED = """() => { const el = document.activeElement;
  return el.id || (el.tagName.toLowerCase() + ':' + (el.textContent || '').trim()); }"""


async def unlabeled(page: Any) -> list[str]:
    """The page's form controls that a screen reader could not name."""
    found: list[str] = await page.evaluate(UNLABELED)
    return found


async def test_every_control_has_a_label(browser: Any, hub_factory: HubFactory) -> None:
    async with hub_factory() as hub:
        async with new_page(browser, hub) as page:
            await page.goto(hub.url + "/ui/login")
            assert await unlabeled(page) == []
            await log_in(page, hub)
            await page.wait_for_url(hub.url + "/ui/")
            for path in ("/ui/", "/ui/?q=Grace", f"/ui/customers/{hub.customer_id}", "/ui/calls"):
                await page.goto(hub.url + path)
                assert await unlabeled(page) == [], path
            # The composer's controls are found by their labels, as a screen reader names them.
            await page.goto(f"{hub.url}/ui/customers/{hub.customer_id}")
            for label in ("SMS", "Email", "Internal note", "Message", "Phone or email"):
                assert await page.get_by_label(label, exact=True).count() == 1, label
            assert await page.get_by_role("button", name=f"Remove {PHONE}").count() == 1
            assert await page.get_by_role(
                "navigation", name="Filter the timeline by channel"
            ).count()


async def test_login_search_and_send_with_the_keyboard_only(
    browser: Any, hub_factory: HubFactory
) -> None:
    async with hub_factory() as hub:
        async with new_page(browser, hub) as page:
            keys = page.keyboard
            await page.goto(hub.url + "/ui/login")
            assert await page.evaluate(FOCUSED) == "email"  # autofocus
            await keys.type(EMAIL)
            await keys.press("Tab")
            assert await page.evaluate(FOCUSED) == "password"
            await keys.type(PASSWORD)
            await keys.press("Enter")
            await page.wait_for_url(hub.url + "/ui/")

            assert await page.evaluate(FOCUSED) == "q"  # the search box has the focus
            await keys.type("415.555.0123")
            await page.get_by_role("link", name="Grace Hopper").wait_for()
            assert "1 customer found" in await page.get_by_role("status").all_inner_texts()
            await keys.press("Tab")
            assert await page.evaluate(FOCUSED) == "button:Search"
            await keys.press("Tab")
            assert (await page.evaluate(FOCUSED)).startswith("a:Grace Hopper")
            await keys.press("Enter")
            await page.wait_for_url(f"{hub.url}/ui/customers/{hub.customer_id}")
            await page.locator("body[data-live='on']").wait_for(state="attached")

            # Focus order of the 360 view: skip link, header, then the profile's forms in
            # reading order, then the composer, then the timeline.
            order: list[str] = []
            for _ in range(60):
                await keys.press("Tab")
                order.append(await page.evaluate(FOCUSED))
                if order[-1] == "text":
                    break
            assert order[0] == "a:Skip to content", order
            expected = [
                "a:Search",
                "button:Log out",
                "a:Jump to the reply box",
                "id-kind",
                "id-value",
                "button:Add",
                "attr-key",
                "attr-value",
                "button:Save",
                "cust-name",
                "button:Rename",
                "merge-other",
                "button:Merge",
                "ch-sms",  # the radio group is one tab stop: the checked one
                "text",
            ]
            positions = [order.index(name) for name in expected]
            assert positions == sorted(positions), order
            # The skip links work: "Jump to the reply box" lands in the message box.
            await page.goto(f"{hub.url}/ui/customers/{hub.customer_id}")
            await page.get_by_role("link", name="Jump to the reply box").focus()
            await keys.press("Enter")
            assert await page.evaluate(FOCUSED) == "text"

            # Choose "Internal note" with the arrow keys, write, Tab to Send, Enter.
            await page.get_by_label("SMS").focus()
            await keys.press("ArrowRight")
            await keys.press("ArrowRight")
            assert await page.get_by_label("Internal note").is_checked()
            await page.get_by_label("Message", exact=True).focus()
            await keys.type("Called back, all good.")
            await keys.press("Tab")
            assert await page.evaluate(FOCUSED) == "button:Send"
            await keys.press("Enter")
            status = page.locator("#composer-status [role=status]")
            await status.wait_for()
            assert "Note added" in await status.inner_text()
            note = page.locator("#timeline > li.event", has_text="Called back, all good.")
            await note.wait_for()
            assert "New Note internal on this timeline." in await page.inner_text("#live-status")


async def test_the_call_banner_is_announced(browser: Any, hub_factory: HubFactory) -> None:
    async with hub_factory(callback_delay=4.0) as hub:
        async with new_page(browser, hub) as page:
            await log_in(page, hub)
            await page.wait_for_url(hub.url + "/ui/")
            await page.locator("body[data-live='on']").wait_for(state="attached")
            region = page.get_by_role("region", name="Incoming calls")
            # Empty, the live region is still rendered (in the accessibility tree).
            assert await region.get_attribute("aria-live") == "assertive"
            assert await region.is_visible() or await region.evaluate(
                "el => getComputedStyle(el).display !== 'none'"
            )
            call = asyncio.create_task(hub.sandbox.call_hub(PHONE, OUR_NUMBER, answer=False))
            banner = region.get_by_role("article", name=f"Call from {PHONE}")
            await banner.wait_for(timeout=2000)
            await call
            assert "Grace Hopper" in await banner.inner_text()
            assert await page.get_by_role("link", name="Grace Hopper").count() >= 1
