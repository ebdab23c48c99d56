"""Playing a call's recording through the hub: the audio is streamed from Twilio.

Recordings stay at the provider, behind the account's credentials
(https://www.twilio.com/docs/voice/api/recording#fetch-a-recording-media-file). The hub
never stores or shows their URL: it builds it from ``TWILIO_API_BASE``, the account and
the recording's sid, fetches it with HTTP Basic auth and streams the bytes to the agent
as they come (no buffering of a long call in memory). ``Range`` is passed on, so a
browser's ``<audio>`` can seek; Twilio answers ``206`` with ``Content-Range``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from channels.twilio.voice import recording_media_url
from config import Settings
from hub.errors import ApiError

log = logging.getLogger(__name__)

#: Headers of Twilio's answer worth passing on to the browser.
_PASSED = (
    "content-type",
    "content-length",
    "content-encoding",
    "content-range",
    "accept-ranges",
    "etag",
)
_CHUNK = 64 * 1024


async def stream_recording(
    settings: Settings, recording_sid: str, *, range_header: str | None = None
) -> Response:
    """The recording's audio, streamed from Twilio; ApiError 404/502 if it cannot be had."""
    assert settings.twilio_account_sid and settings.twilio_auth_token
    url = recording_media_url(settings.twilio_api_base, settings.twilio_account_sid, recording_sid)
    client = httpx.AsyncClient(
        auth=(settings.twilio_account_sid, settings.twilio_auth_token),
        timeout=httpx.Timeout(30.0, connect=10.0),
        follow_redirects=True,  # Twilio serves media from a redirect to its storage
    )
    headers = {"Range": range_header} if range_header else {}
    try:
        upstream = await client.send(client.build_request("GET", url, headers=headers), stream=True)
    except httpx.HTTPError as exc:
        await client.aclose()
        log.warning("recording %s: Twilio unreachable (%s)", recording_sid, type(exc).__name__)
        raise ApiError(502, "provider_unavailable", "the recording could not be fetched") from None
    if upstream.status_code not in (200, 206):
        status = upstream.status_code
        await upstream.aclose()
        await client.aclose()
        log.warning("recording %s: Twilio answered %d", recording_sid, status)
        if status == 404:
            raise ApiError(404, "not_found", "the provider no longer has this recording")
        raise ApiError(502, "provider_error", f"the provider answered {status}")

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw(_CHUNK):
                yield chunk
        finally:
            await close()

    async def close() -> None:
        await upstream.aclose()
        await client.aclose()

    passed = {k: v for k, v in upstream.headers.items() if k.lower() in _PASSED}
    passed.setdefault("content-type", "audio/x-wav")
    passed["Cache-Control"] = "private, max-age=3600"
    passed["Content-Disposition"] = f'inline; filename="{recording_sid}.wav"'
    return StreamingResponse(
        body(),
        status_code=upstream.status_code,
        headers=passed,
        background=BackgroundTask(close),
    )
