"""The sandbox's ``DELETE .../Recordings/{sid}.json`` through the official SDK, as at Twilio:
204, then Twilio's 404 (20404) for the resource, its media and a second delete.
https://www.twilio.com/docs/voice/api/recording#delete-a-recording-resource"""

from __future__ import annotations

import httpx
import pytest
from twilio.base.exceptions import TwilioRestException

from channels.twilio.client import TwilioClient
from channels.twilio.errors import ApiError
from channels.twilio.sandbox import Sandbox
from channels.twilio.sandbox.recordings import recording_resource, wav_tone
from tests.channels.twilio.conftest import ACCOUNT_SID, AUTH_TOKEN, Peer

CALL_SID = "CA" + "1" * 32


def add_recording(peer: Peer, sid: str) -> str:
    """A completed recording of a finished call, as ``Voice`` stores one."""
    voice = peer.sandbox.voice
    voice.recordings[sid] = recording_resource(ACCOUNT_SID, sid, CALL_SID, 7, "DialVerb", peer.url)
    voice.audio[sid] = wav_tone(7, sid)
    return f"{peer.url}/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/{sid}"


async def test_the_sdk_deletes_a_recording_and_its_media(peer: Peer, twilio: TwilioClient) -> None:
    sid, other = "RE" + "a" * 32, "RE" + "b" * 32
    url = add_recording(peer, sid)
    add_recording(peer, other)
    async with httpx.AsyncClient(auth=(ACCOUNT_SID, AUTH_TOKEN)) as http:
        assert (await http.get(url + ".wav")).status_code == 200

        # The SDK itself (the client's own SDK instance, rebased to the sandbox): 204 is
        # True, a second delete is Twilio's 404 with its JSON error body.
        sdk = twilio._client()
        assert await sdk.recordings(sid).delete_async() is True
        with pytest.raises(TwilioRestException) as raised:
            await sdk.recordings(sid).delete_async()
        assert (raised.value.status, raised.value.code) == (404, 20404)

        for suffix in (".wav", "", ".json"):
            gone = await http.get(url + suffix)
            assert gone.status_code == 404
            assert gone.json()["code"] == 20404 and gone.json()["status"] == 404
        answer = await http.delete(url + ".json")
        assert answer.status_code == 404
        assert answer.json()["more_info"] == "https://www.twilio.com/docs/errors/20404"
    assert sid not in peer.sandbox.voice.recordings and sid not in peer.sandbox.voice.audio
    assert other in peer.sandbox.voice.recordings  # only the one asked for


async def test_delete_recording_treats_already_gone_as_deleted(
    peer: Peer, twilio: TwilioClient
) -> None:
    sid = "RE" + "c" * 32
    add_recording(peer, sid)
    await twilio.delete_recording(sid)
    assert sid not in peer.sandbox.voice.recordings
    await twilio.delete_recording(sid)  # 404 at the provider: nothing to do
    await twilio.delete_recording("RE" + "d" * 32)  # never existed


async def test_delete_recording_raises_the_providers_refusal(peer: Peer, sandbox: Sandbox) -> None:
    sid = "RE" + "e" * 32
    add_recording(peer, sid)
    async with TwilioClient(ACCOUNT_SID, "wrong-token", peer.url, timeout=5) as wrong:
        with pytest.raises(ApiError) as raised:
            await wrong.delete_recording(sid)
    assert (raised.value.http_status, raised.value.code) == (401, 20003)
    assert sid in sandbox.voice.recordings  # nothing deleted without the account's auth
