"""The sandbox page in demo mode, in a real Chromium: a person plays a customer.

One browser window is the customer's (the sandbox page with their simulated phone), the
other the agent's (the customer's 360 view with its live stream). The customer texts the
hub and the message shows up live on the agent's timeline; the agent replies by SMS and
the reply arrives on the simulated phone; the customer places a call and the agent's
screen pop shows it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from channels.twilio.sandbox import serve
from hub.app import create_app
from tests.hub.conftest import hub_settings
from tests.ui.conftest import ACCOUNT, OUR_NUMBER, PHONE, TOKEN, RunningHub, free_port, seed
from tests.ui.test_accessibility import unlabeled
from tests.ui.test_browser import log_in, new_page, shot


@contextlib.asynccontextmanager
async def demo_hub(tmp_path: Path) -> AsyncIterator[RunningHub]:
    """A hub in demo mode: it runs the built-in Twilio sandbox itself (``TWILIO_SANDBOX``),
    as ``run.py demo`` does, with its workers; an agent and a customer seeded."""
    port, sandbox_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    settings = hub_settings(
        f"sqlite+aiosqlite:///{tmp_path}/hub.db",
        tmp_path / "files",
        public_url=url,
        twilio_account_sid=ACCOUNT,
        twilio_auth_token=TOKEN,
        twilio_numbers=(OUR_NUMBER,),
        twilio_api_base=f"http://127.0.0.1:{sandbox_port}",
        twilio_sandbox=True,
    )
    app = create_app(settings, run_workers=True, sse_heartbeat=1.0)
    async with serve(app, "127.0.0.1", port):
        yield RunningHub(url, app, None, await seed(app))  # type: ignore[arg-type]


async def test_play_a_customer_text_call_and_read_the_reply(browser: Any, tmp_path: Path) -> None:
    async with demo_hub(tmp_path) as hub:
        async with new_page(browser, hub) as customer, new_page(browser, hub) as agent:
            await log_in(agent, hub)
            await agent.wait_for_url(hub.url + "/ui/")
            await agent.goto(f"{hub.url}/ui/customers/{hub.customer_id}")
            await agent.locator("body[data-live='on']").wait_for(state="attached")

            await log_in(customer, hub)
            await customer.wait_for_url(hub.url + "/ui/")
            await customer.get_by_role("link", name="Sandbox").click()
            await customer.wait_for_url(hub.url + "/ui/sandbox")
            await customer.goto(f"{hub.url}/ui/sandbox?number={quote(PHONE)}")
            assert await unlabeled(customer) == []
            assert await customer.get_by_label("To (our number)").input_value() == OUR_NUMBER
            assert await customer.get_by_label("From (the customer's phone)").input_value() == PHONE

            # The customer texts the hub: it arrives live on the agent's timeline.
            await customer.get_by_label("Message", exact=True).fill("Is my order ready?")
            await customer.get_by_role("button", name="Send SMS").click()
            await customer.locator("#sms-result", has_text="Sent to the hub.").wait_for()
            assert await customer.get_by_label("Message", exact=True).input_value() == ""
            inbound = agent.locator("#timeline > li.event", has_text="Is my order ready?")
            await inbound.wait_for()
            assert "inbound" in await inbound.inner_text()

            # The agent replies by SMS; the reply reaches the simulated phone.
            assert await agent.get_by_label("SMS").is_checked()
            await agent.get_by_label("Message", exact=True).fill("Yes, it ships today.")
            await agent.get_by_role("button", name="Send").click()
            await agent.wait_for_selector("#composer-status .ok")
            phone = customer.locator("#phone")
            await phone.locator("li.bubble", has_text="Yes, it ships today.").wait_for()
            assert "Is my order ready?" in await phone.inner_text()
            await shot(customer, "sandbox")

            # The customer phones the hub (nobody answers): the agent's banner pops.
            await customer.get_by_label("An agent answers").select_option("no")
            await customer.get_by_role("button", name="Place call").click()
            await customer.locator("#call-result", has_text="Calling the hub.").wait_for()
            banner = agent.locator("#callbar article.call", has_text="Grace Hopper")
            await banner.wait_for(timeout=3000)
            assert PHONE in await banner.inner_text()
            missed = agent.locator("#timeline > li.event.missed")
            await missed.first.wait_for(timeout=15_000)
            await banner.wait_for(state="detached", timeout=15_000)
