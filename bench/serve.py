"""Serve the hub or an empty endpoint on loopback with identical uvicorn settings.

``python -m bench.serve hub --port P --db-url URL --data-dir DIR`` serves
``create_app(settings, run_workers=False)``; ``python -m bench.serve empty --port P``
serves a Starlette app whose only route has the timeline's path and answers an empty
page without touching anything. Both run uvicorn as ``run.py serve`` does (h11, the
asyncio loop, no access log), so the two differ only by what the hub does per request.
"""

from __future__ import annotations

import argparse
import logging

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

TIMELINE_PATH = "/api/v1/customers/{id}/timeline"


async def empty_page(request: Request) -> Response:
    """The web layer's own cost: routing, a path parameter, a small JSON answer."""
    return JSONResponse({"items": [], "next": None})


def empty_app() -> Starlette:
    """The empty endpoint the hub's page is compared with."""
    return Starlette(routes=[Route(TIMELINE_PATH, empty_page, methods=["GET"])])


def serve(app: Starlette, port: int) -> None:
    """Run uvicorn in the foreground with the settings both servers share."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("which", choices=("hub", "empty"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db-url")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.which == "empty":
        serve(empty_app(), args.port)
        return
    from config import Settings
    from hub.app import create_app

    settings = Settings(database_url=args.db_url, data_dir=args.data_dir, log_level="WARNING")
    serve(create_app(settings, run_workers=False), args.port)


if __name__ == "__main__":
    main()
