"""The sandbox page in demo mode: a person texts the hub and reads its replies."""

from __future__ import annotations

from pathlib import Path

import httpx

from channels.twilio.sandbox import serve
from hub.app import create_app
from hub.auth import add_agent
from tests.hub.conftest import hub_settings
from tests.ui.conftest import ACCOUNT, OUR_NUMBER, TOKEN, free_port
from tests.ui.test_sessions import PASSWORD, hidden_token, log_in


async def test_text_the_hub_and_see_the_phone(tmp_path: Path) -> None:
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
    app = create_app(settings, run_workers=False)
    async with serve(app, "127.0.0.1", port):
        async with app.state.services.db.write() as conn:
            await add_agent(conn, email="ada@hub.example", role="agent", password=PASSWORD)
        async with httpx.AsyncClient(base_url=url, headers={"Origin": url}, timeout=10) as http:
            assert (await log_in(http)).status_code == 303
            page = await http.get("/ui/sandbox")
            assert page.status_code == 200 and "Text the hub" in page.text
            token = hidden_token((await http.get("/ui/")).text)
            sent = await http.post(
                "/ui/sandbox/sms",
                data={
                    "csrf_token": token,
                    "from": "(415) 555-0100",
                    "to": OUR_NUMBER,
                    "body": "Is my order ready?",
                },
            )
            assert "Sent to the hub" in sent.text, sent.text
            phone = await http.get("/ui/sandbox/phone", params={"number": "+14155550100"})
            assert "Is my order ready?" in phone.text
            found = await http.get("/ui/search", params={"q": "order ready"})
            assert "/ui/customers/" in found.text
