"""The servers of the SMS benchmark, each run alone in its own process on loopback.

``python -m bench.sms_serve hub --port P --config FILE`` serves
``create_app(settings, run_workers=False)`` (what ``python run.py serve --no-workers``
runs); ``python -m bench.sms_serve empty --port P`` serves the web layer's limit, a
Starlette endpoint on the same path that reads a Twilio-style form and answers
``<Response/>``; ``python -m bench.sms_serve sandbox --port P --config FILE`` serves the
built-in Twilio sandbox (``channels.twilio.sandbox``) as Twilio would be: another
machine, here another process. All three run uvicorn the same way (h11, the asyncio
loop, no access log), so the hub and the empty endpoint differ only by what the hub does
per request.

``FILE`` is JSON: ``{"settings": {Settings field: value, ...}}`` for the hub; for the
sandbox ``{"account_sid", "auth_token", "hub_url", "numbers", "drop_statuses"}``.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

INBOUND_PATH = "/webhooks/twilio/sms"


async def empty_webhook(request: Request) -> Response:
    """The web layer's own cost for a Twilio webhook: read the form, answer TwiML."""
    form = await request.form()
    form.get("MessageSid")
    return Response("<Response/>", media_type="text/xml")


def empty_app() -> Starlette:
    """The empty endpoint the hub's inbound webhook is compared with."""
    return Starlette(routes=[Route(INBOUND_PATH, empty_webhook, methods=["POST"])])


def serve(app: Any, port: int) -> None:
    """Run uvicorn in the foreground with the settings every server here shares."""
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        http="h11",
        loop="asyncio",
        lifespan="on",
        access_log=False,
        log_level="warning",
    )


def hub_app(config: dict[str, Any]) -> Any:
    """The hub as ``run.py serve --no-workers`` builds it."""
    from config import Settings
    from hub.app import create_app

    values = dict(config["settings"])
    if "twilio_numbers" in values:
        values["twilio_numbers"] = tuple(values["twilio_numbers"])
    return create_app(Settings(**values), run_workers=False)


def sandbox_app(config: dict[str, Any]) -> Any:
    """The built-in Twilio sandbox; its callbacks go wherever the messages say."""
    from channels.twilio.sandbox import Sandbox

    sandbox = Sandbox(
        config["account_sid"],
        config["auth_token"],
        config["hub_url"],
        numbers=config.get("numbers", ()),
        drop_statuses=config.get("drop_statuses", ()),
    )
    # Each callback to the closed port logs a warning: 20,000 lines would cost more
    # than the callbacks themselves, and say nothing here.
    logging.getLogger("channels.twilio.sandbox.app").setLevel(logging.ERROR)
    return sandbox.app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("which", choices=("hub", "empty", "sandbox"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config: dict[str, Any] = {}
    if args.config:
        with open(args.config, encoding="utf-8") as handle:
            config = json.load(handle)
    if args.which == "empty":
        serve(empty_app(), args.port)
    elif args.which == "hub":
        serve(hub_app(config), args.port)
    else:
        serve(sandbox_app(config), args.port)


if __name__ == "__main__":
    main()
