"""Fixtures: recorded payloads, and the sandbox + a tiny signature-checking hub on loopback."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from channels.twilio.client import TwilioClient
from channels.twilio.forms import decode_form, form_items
from channels.twilio.sandbox import Sandbox, run_sandbox, serve
from channels.twilio.signature import SIGNATURE_HEADER, public_url_for, verify

FIXTURES = Path(__file__).parents[3] / "channels" / "twilio" / "fixtures"

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "test-auth-token-not-a-secret"
OUR_NUMBER = "+14155550199"
OTHER_NUMBER = "+14155550198"
CUSTOMER = "+14155550100"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_form(name: str) -> list[tuple[str, str]]:
    return decode_form(fixture_bytes(name))


@dataclasses.dataclass
class Received:
    path: str
    form: list[tuple[str, str]]
    signature_valid: bool
    valid_for_internal_url: bool

    def get(self, key: str) -> str | None:
        return next((v for k, v in self.form if k == key), None)


@dataclasses.dataclass
class Hub:
    """A stand-in for the hub's webhooks: checks X-Twilio-Signature as the hub will."""

    public_url: str = ""
    internal_url: str = ""
    reply: str = "<Response/>"
    received: list[Received] = dataclasses.field(default_factory=list)

    def app(self) -> Starlette:
        async def webhook(request: Request) -> Response:
            form = form_items(await request.form())
            signature = request.headers.get(SIGNATURE_HEADER)
            query = request.url.query
            public = public_url_for(self.public_url, request.url.path, query)
            internal = public_url_for(self.internal_url, request.url.path, query)
            self.received.append(
                Received(
                    request.url.path,
                    form,
                    verify(AUTH_TOKEN, public, form, None, signature),
                    verify(AUTH_TOKEN, internal, form, None, signature),
                )
            )
            body = self.reply if request.url.path == "/webhooks/twilio/sms" else ""
            return Response(body, media_type="text/xml")

        paths = (
            "/webhooks/twilio/sms",
            "/webhooks/twilio/sms/status",
            "/webhooks/twilio/voice/status",
        )
        return Starlette(routes=[Route(p, webhook, methods=["POST"]) for p in paths])

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    receiver = Hub()
    async with serve(receiver.app()) as url:
        receiver.public_url = receiver.internal_url = url
        yield receiver


@dataclasses.dataclass
class Peer:
    """The sandbox and where it listens (the ``TWILIO_API_BASE``)."""

    sandbox: Sandbox
    url: str


@pytest.fixture
async def peer(hub: Hub) -> AsyncIterator[Peer]:
    box = Sandbox(ACCOUNT_SID, AUTH_TOKEN, hub.internal_url, callback_delay=0.01)
    async with run_sandbox(box) as url:
        yield Peer(box, url)


@pytest.fixture
def sandbox(peer: Peer) -> Sandbox:
    return peer.sandbox


@pytest.fixture
async def twilio(peer: Peer) -> AsyncIterator[TwilioClient]:
    async with TwilioClient(ACCOUNT_SID, AUTH_TOKEN, peer.url, timeout=5) as client:
        yield client
