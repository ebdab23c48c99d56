"""The sandbox's recordings: Recording resources, their callbacks, and their audio.

https://www.twilio.com/docs/voice/api/recording. A recording is a short generated WAV file
(a tone, 8 kHz 16-bit mono, at most three seconds whatever its stated duration), served at
its Twilio URL ``{base}/2010-04-01/Accounts/{AccountSid}/Recordings/{RecordingSid}``:
``.wav`` or no extension answers the audio (``Range`` honoured, 206), ``.json`` the
resource; both behind HTTP Basic auth, as Twilio serves recording media
(https://www.twilio.com/docs/voice/api/recording#fetch-a-recording-media-file).
``DELETE`` on the ``.json`` URL deletes the recording (:func:`delete_recording`). Pure but
for the Starlette responses.
"""

from __future__ import annotations

import io
import math
import re
import secrets
import struct
import wave
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from channels.twilio.sandbox.shapes import API_VERSION, not_found, now_rfc2822

if TYPE_CHECKING:
    from channels.twilio.sandbox.app import Sandbox

__all__ = [
    "audio_response",
    "delete_recording",
    "recording_form",
    "recording_resource",
    "transcription_form",
    "wav_tone",
]

_WAV_RATE = 8000
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def wav_tone(seconds: int, seed: str) -> bytes:
    """A short WAV file (8 kHz, 16-bit mono): a tone whose pitch depends on ``seed``."""
    frames = _WAV_RATE * max(1, min(seconds, 3))
    pitch = 300 + int.from_bytes(seed.encode()[-2:], "big") % 500
    samples = (int(8000 * math.sin(2 * math.pi * pitch * n / _WAV_RATE)) for n in range(frames))
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(_WAV_RATE)
        wav.writeframes(b"".join(struct.pack("<h", s) for s in samples))
    return out.getvalue()


def recording_resource(
    account_sid: str, sid: str, call_sid: str, seconds: int, source: str, base: str
) -> dict[str, Any]:
    """A completed Recording resource; ``media_url`` is where the sandbox serves it."""
    path = f"/{API_VERSION}/Accounts/{account_sid}/Recordings/{sid}"
    now = now_rfc2822()
    return {
        "account_sid": account_sid,
        "api_version": API_VERSION,
        "call_sid": call_sid,
        "conference_sid": None,
        "channels": 1,
        "date_created": now,
        "date_updated": now,
        "start_time": now,
        "duration": str(seconds),
        "sid": sid,
        "price": None,
        "price_unit": "USD",
        "status": "completed",
        "source": source,
        "error_code": None,
        "encryption_details": None,
        "uri": f"{path}.json",
        "media_url": base.rstrip("/") + path,
        "subresource_uris": {
            "transcriptions": f"{path}/Transcriptions.json",
            "add_on_results": f"{path}/AddOnResults.json",
        },
    }


def recording_form(account_sid: str, recording: dict[str, Any]) -> list[tuple[str, str]]:
    """A recording status callback: https://www.twilio.com/docs/voice/api/recording#recordingstatuscallback"""
    return [
        ("AccountSid", account_sid),
        ("CallSid", recording["call_sid"]),
        ("RecordingSid", recording["sid"]),
        ("RecordingUrl", recording["media_url"]),
        ("RecordingStatus", recording["status"]),
        ("RecordingDuration", recording["duration"]),
        ("RecordingChannels", str(recording["channels"])),
        ("RecordingStartTime", recording["start_time"]),
        ("RecordingSource", recording["source"]),
        ("RecordingTrack", "both"),
        ("ErrorCode", "0"),
    ]


def transcription_form(
    account_sid: str, call: dict[str, Any], recording: dict[str, Any], text: str, base: str
) -> list[tuple[str, str]]:
    """A transcription callback: https://www.twilio.com/docs/voice/twiml/record#transcribecallback"""
    sid = "TR" + secrets.token_hex(16)
    path = f"/{API_VERSION}/Accounts/{account_sid}/Transcriptions/{sid}"
    return [
        ("TranscriptionSid", sid),
        ("TranscriptionText", text),
        ("TranscriptionStatus", "completed"),
        ("TranscriptionUrl", base.rstrip("/") + path),
        ("TranscriptionType", "fast"),
        ("RecordingSid", recording["sid"]),
        ("RecordingUrl", recording["media_url"]),
        ("CallSid", call["sid"]),
        ("AccountSid", account_sid),
        ("From", call["from"]),
        ("To", call["to"]),
        ("CallStatus", "completed"),
        ("ApiVersion", API_VERSION),
        ("Direction", call["direction"]),
        ("url", recording["media_url"]),
    ]


def audio_response(audio: bytes, range_header: str) -> Response:
    """The WAV bytes, or the part a ``Range: bytes=a-b`` header asks for (206, or 416)."""
    headers = {"Accept-Ranges": "bytes"}
    match = _RANGE.fullmatch(range_header)
    if not match or not (match[1] or match[2]):
        return Response(audio, headers=headers, media_type="audio/x-wav")
    size = len(audio)
    if match[1]:
        start = int(match[1])
        end = min(int(match[2]), size - 1) if match[2] else size - 1
    else:
        start, end = max(size - int(match[2]), 0), size - 1
    if start > end or start >= size:
        headers["Content-Range"] = f"bytes */{size}"
        return Response(status_code=416, headers=headers)
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return Response(audio[start : end + 1], 206, headers=headers, media_type="audio/x-wav")


async def delete_recording(request: Request) -> Response:
    """``DELETE .../Recordings/{RecordingSid}.json``: 204, or Twilio's 404 (20404).

    As at Twilio, the media is gone at once and the resource is no longer fetched or
    listed (Twilio keeps soft-deleted metadata for 40 days, only shown with
    ``IncludeSoftDeleted``, which the sandbox does not offer).
    https://www.twilio.com/docs/voice/api/recording#delete-a-recording-resource
    """
    sandbox: Sandbox = request.app.state.sandbox
    if (denied := sandbox.denied(request)) is not None:
        return denied
    sid, _, extension = request.path_params["name"].partition(".")
    voice = sandbox.voice
    if extension not in ("", "json") or voice.recordings.pop(sid, None) is None:
        return not_found(request.url.path)
    voice.audio.pop(sid, None)
    return Response(status_code=204)
