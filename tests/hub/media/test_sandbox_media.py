"""The sandbox's Media resource, and which URLs get the account's credentials.

No database here: the sandbox texts a stand-in hub that answers an empty TwiML.
"""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from channels.twilio.forms import decode_form
from channels.twilio.sandbox import MediaFile, Sandbox, run_sandbox, serve
from config import Settings
from hub.media import credentials_for
from tests.hub.media.conftest import ACCOUNT_SID, AUTH_TOKEN, CUSTOMER, OUR_NUMBER

AUTH = (ACCOUNT_SID, AUTH_TOKEN)


class _Receiver:
    def __init__(self) -> None:
        self.forms: list[list[tuple[str, str]]] = []

    def app(self) -> Starlette:
        async def sms(request: Request) -> Response:
            self.forms.append(decode_form(await request.body()))
            return Response("<Response/>", media_type="text/xml")

        return Starlette(routes=[Route("/webhooks/twilio/sms", sms, methods=["POST"])])


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[_Receiver, str]]:
    hub = _Receiver()
    async with serve(hub.app()) as url:
        yield hub, url


@pytest.fixture
async def box(receiver: tuple[_Receiver, str]) -> AsyncIterator[Sandbox]:
    sandbox = Sandbox(ACCOUNT_SID, AUTH_TOKEN, receiver[1])
    async with run_sandbox(sandbox):
        yield sandbox


def _png_chunks(content: bytes) -> list[bytes]:
    assert content[:8] == b"\x89PNG\r\n\x1a\n"
    kinds, at = [], 8
    while at < len(content):
        (length,) = struct.unpack(">I", content[at : at + 4])
        kind, data = content[at + 4 : at + 8], content[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", content[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(kind + data)
        if kind == b"IDAT":
            assert len(zlib.decompress(data)) == 4  # filter byte + one RGB pixel
        kinds.append(kind)
        at += 12 + length
    return kinds


async def test_mms_media_are_hosted_twilio_style(
    box: Sandbox, receiver: tuple[_Receiver, str]
) -> None:
    assert box.base_url is not None  # run_sandbox told it where it is
    result = await box.text_hub(
        CUSTOMER,
        OUR_NUMBER,
        "look",
        ["https://example.com/elsewhere.png"],
        media=[MediaFile("image/png"), MediaFile("text/vcard", b"BEGIN:VCARD\r\nEND:VCARD\r\n")],
    )
    assert result.sid.startswith("MM") and len(result.media_urls) == 3
    form = dict(receiver[0].forms[-1])
    assert form["NumMedia"] == "3"
    assert [form[f"MediaUrl{i}"] for i in range(3)] == list(result.media_urls)
    assert [form[f"MediaContentType{i}"] for i in range(3)] == [
        "image/png",
        "image/png",
        "text/vcard",
    ]
    png_url, vcard_url = result.media_urls[1:]
    prefix = f"{box.base_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{result.sid}/Media/"
    assert png_url.startswith(prefix) and len(png_url.removeprefix(prefix)) == 34
    assert box.phone_log(CUSTOMER)[0]["media_urls"] == list(result.media_urls)

    async with httpx.AsyncClient() as http:
        anonymous = await http.get(png_url)
        wrong = await http.get(png_url, auth=(ACCOUNT_SID, "not-the-token"))
        png = await http.get(png_url, auth=AUTH)
        vcard = await http.get(vcard_url, auth=AUTH)
        resource = await http.get(png_url + ".json", auth=AUTH)
        listed = await http.get(prefix.removesuffix("/") + ".json", auth=AUTH)
        other_account = await http.get(png_url.replace(ACCOUNT_SID, "AC" + "f" * 32), auth=AUTH)
        deleted = await http.delete(vcard_url + ".json", auth=AUTH)
        gone = await http.get(vcard_url, auth=AUTH)
        unknown_message = await http.get(
            prefix.replace(result.sid, "MM" + "0" * 32).removesuffix("/") + ".json", auth=AUTH
        )

    for refused in (anonymous, wrong):
        assert refused.status_code == 401
        assert refused.json()["code"] == 20003
        assert refused.headers["www-authenticate"].startswith("Basic")
    assert png.headers["content-type"] == "image/png"
    assert _png_chunks(png.content) == [b"IHDR", b"tEXt", b"IDAT", b"IEND"]
    assert vcard.content == b"BEGIN:VCARD\r\nEND:VCARD\r\n"
    media_sid = png_url.rsplit("/", 1)[1]
    assert resource.json() == {
        "account_sid": ACCOUNT_SID,
        "content_type": "image/png",
        "date_created": resource.json()["date_created"],
        "date_updated": resource.json()["date_created"],
        "parent_sid": result.sid,
        "sid": media_sid,
        "uri": png_url.removeprefix(box.base_url) + ".json",
    }
    page = listed.json()
    assert sorted(m["sid"] for m in page["media_list"]) == sorted(
        url.rsplit("/", 1)[1] for url in result.media_urls[1:]
    )
    assert page["page"] == 0 and page["next_page_uri"] is None
    assert other_account.status_code == 404
    assert deleted.status_code == 204
    assert gone.status_code == 404 and gone.json()["code"] == 20404
    assert unknown_message.status_code == 404


async def test_generated_files_are_valid_and_distinct(box: Sandbox) -> None:
    kinds = ["image/png", "image/png", "image/jpeg", "image/gif", "text/plain", "audio/amr"]
    result = await box.text_hub(CUSTOMER, OUR_NUMBER, "", media=[MediaFile(k) for k in kinds])
    contents = [box.media[url.rsplit("/", 1)[1]].content for url in result.media_urls]
    assert len(set(contents)) == len(contents)
    png, _, jpeg, gif, text, amr = contents
    _png_chunks(png)
    assert jpeg.startswith(b"\xff\xd8\xff\xfe") and jpeg.endswith(b"\xff\xd9")
    assert b"\xff\xc0\x00\x0b\x08\x00\x01\x00\x01" in jpeg  # SOF0: 8 bits, 1x1
    assert gif.startswith(b"GIF89a\x01\x00\x01\x00") and gif.endswith(b";")
    assert text.decode().startswith("Sandbox media ME")
    assert b"audio/amr" in amr


async def test_media_can_redirect_to_a_cdn_on_another_origin(box: Sandbox) -> None:
    result = await box.text_hub(CUSTOMER, OUR_NUMBER, "", media=[MediaFile("image/gif")])
    [url] = result.media_urls
    media_sid = url.rsplit("/", 1)[1]
    async with serve(box.app) as cdn_url:
        box.media_redirect = cdn_url
        async with httpx.AsyncClient() as http:
            redirect = await http.get(url, auth=AUTH)
            location = redirect.headers["location"]
            followed = await http.get(url, auth=AUTH, follow_redirects=True)
            forged = await http.get(location.replace("Signature=", "Signature=0"))
            anonymous = await http.get(url, follow_redirects=True)
    assert redirect.status_code == 307
    assert location.startswith(f"{cdn_url}/sandbox/media-cdn/{media_sid}?Expires=")
    assert followed.status_code == 200 and followed.content == box.media[media_sid].content
    assert followed.history[0].status_code == 307
    assert forged.status_code == 403
    assert anonymous.status_code == 401


async def test_phones_can_send_media_over_http(
    box: Sandbox, receiver: tuple[_Receiver, str]
) -> None:
    content = base64.b64encode(b"hello").decode()
    assert box.base_url is not None
    async with httpx.AsyncClient(base_url=box.base_url) as http:
        answer = await http.post(
            "/sandbox/sms",
            json={
                "from": CUSTOMER,
                "to": OUR_NUMBER,
                "media": [{"content_type": "text/plain", "content_base64": content}],
            },
        )
        bad = await http.post(
            "/sandbox/sms", json={"from": CUSTOMER, "to": OUR_NUMBER, "media": [{"x": 1}]}
        )
        [url] = answer.json()["media_urls"]
        fetched = await http.get(url, auth=AUTH)
    assert answer.status_code == 200 and answer.json()["hub_status"] == 200
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_media"
    assert fetched.content == b"hello"


async def test_hosting_media_needs_to_know_where_the_sandbox_is() -> None:
    sandbox = Sandbox(ACCOUNT_SID, AUTH_TOKEN, "http://127.0.0.1:9")
    with pytest.raises(RuntimeError, match="base_url"):
        await sandbox.text_hub(CUSTOMER, OUR_NUMBER, "", media=[MediaFile()])
    await sandbox.aclose()


@pytest.mark.parametrize(
    ("url", "sent"),
    [
        ("http://127.0.0.1:8765/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1", True),
        ("HTTP://127.0.0.1:8765/x", True),
        ("https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1", True),
        ("https://API.Twilio.com:443/x", True),
        ("http://api.twilio.com/x", False),
        ("https://api.twilio.com:8443/x", False),
        ("https://api.twilio.com.example.com/x", False),
        ("https://example.com/?next=https://api.twilio.com/", False),
        ("https://media.twiliocdn.com/x", False),
        ("http://127.0.0.1:8766/x", False),
        ("http://localhost:8765/x", False),
        ("ftp://api.twilio.com/x", False),
        ("https://api.twilio.com:notaport/x", False),
    ],
)
def test_credentials_go_only_to_twilios_origin(url: str, sent: bool) -> None:
    settings = Settings(
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
        twilio_api_base="http://127.0.0.1:8765",
    )
    assert credentials_for(url, settings) == (AUTH if sent else None)
    assert credentials_for(url, Settings(twilio_api_base="http://127.0.0.1:8765")) is None
