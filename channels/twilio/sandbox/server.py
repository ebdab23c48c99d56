"""Serve an ASGI app with uvicorn on loopback, inside the running event loop.

For the sandbox (:func:`run_sandbox`) and for tests' small receiver apps. The server
runs as a task of the caller's loop, binds its own socket (port 0 picks a free one) and
leaves signal handling to the process that runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import uvicorn
from starlette.types import ASGIApp

from channels.twilio.sandbox.app import Sandbox

__all__ = ["run_sandbox", "serve"]


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn would take over SIGINT/SIGTERM of the hub (or pytest) process.
        yield


@contextlib.asynccontextmanager
async def serve(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve ``app`` in a background task; yields its base URL, stops on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="auto")
    server = _Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the server stopped while starting")
            await asyncio.sleep(0.005)
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@contextlib.asynccontextmanager
async def run_sandbox(
    sandbox: Sandbox, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve ``sandbox`` on loopback; yields its base URL, the ``TWILIO_API_BASE``.

    The sandbox's ``base_url`` (of the media it hosts) becomes that URL unless it has
    one. Pending callbacks are cancelled and its HTTP client closed when the block exits.
    """
    try:
        async with serve(sandbox.app, host, port) as base_url:
            if sandbox.base_url is None:
                sandbox.base_url = base_url
            yield base_url
    finally:
        await sandbox.aclose()
