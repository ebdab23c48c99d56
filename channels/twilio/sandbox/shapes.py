"""What the sandbox says, shaped as Twilio says it: resources, forms, errors. Pure.

Message resource: https://www.twilio.com/docs/messaging/api/message-resource
Call resource: https://www.twilio.com/docs/voice/api/call-resource
Incoming message form: https://www.twilio.com/docs/messaging/guides/webhook-request
Status callbacks:
https://www.twilio.com/docs/messaging/guides/outbound-message-status-in-status-callbacks
"""

from __future__ import annotations

import email.utils
import mimetypes
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlencode

import phonenumbers
from starlette.responses import JSONResponse

from timeline.events import utcnow

API_VERSION = "2010-04-01"
E164 = re.compile(r"\+[1-9][0-9]{6,14}")

#: Last four digits of To -> the final status and ErrorCode the carrier reports.
TEST_NUMBERS: dict[str, tuple[str, int]] = {
    "0005": ("undelivered", 30005),
    "0003": ("undelivered", 30003),
    "0007": ("undelivered", 30007),
    "0001": ("failed", 30001),
}
_ERROR_TEXT = {
    30001: "Queue overflow",
    30003: "Unreachable destination handset",
    30005: "Unknown destination handset",
    30007: "Message filtered",
}
#: Twilio's default replies to its opt-out, opt-in and help keywords.
AUTO_REPLY = {
    "opt_out": "You have successfully been unsubscribed. You will not receive any more "
    "messages from this number. Reply START to resubscribe.",
    "opt_in": "You have successfully been re-subscribed to messages from this number. "
    "Reply HELP for help. Reply STOP to unsubscribe. Msg&Data Rates May Apply.",
    "help": "Reply STOP to unsubscribe. Msg&Data Rates May Apply.",
}
#: The GSM 03.38 basic character set: a text of only these is sent 160 characters a
#: segment, anything else as UCS-2 (70).
_GSM = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà^{}\\[~]|€"
)


def now_rfc2822() -> str:
    """Now, as the REST API writes dates (``Thu, 24 Aug 2023 05:01:45 +0000``)."""
    return email.utils.format_datetime(utcnow())


def error_response(http_status: int, code: int, message: str) -> JSONResponse:
    """Twilio's REST error body: https://www.twilio.com/docs/usage/twilios-response#response-formats-exceptions"""
    return JSONResponse(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": http_status,
        },
        status_code=http_status,
    )


def not_found(path: str) -> JSONResponse:
    """Twilio's 404 (code 20404)."""
    return error_response(404, 20404, f"The requested resource {path} was not found")


def segments(body: str) -> int:
    """How many SMS segments ``body`` takes."""
    if not body:
        return 1
    single, multi = (160, 153) if set(body) <= _GSM else (70, 67)
    return 1 if len(body) <= single else -(-len(body) // multi)


def country(number: str) -> str:
    """ISO country of a phone number, or "" (Twilio's ``FromCountry``)."""
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(number, None)) or ""
    except phonenumbers.NumberParseException:
        return ""


def message_resource(
    account_sid: str,
    sid: str,
    from_: str | None,
    to: str,
    body: str,
    media_count: int,
    direction: str,
    messaging_service_sid: str | None = None,
) -> dict[str, Any]:
    """A new Message resource, status ``queued``."""
    now = now_rfc2822()
    uri = f"/{API_VERSION}/Accounts/{account_sid}/Messages/{sid}"
    return {
        "account_sid": account_sid,
        "api_version": API_VERSION,
        "body": body,
        "date_created": now,
        "date_sent": None,
        "date_updated": now,
        "direction": direction,
        "error_code": None,
        "error_message": None,
        "from": from_,
        "messaging_service_sid": messaging_service_sid,
        "num_media": str(media_count),
        "num_segments": str(segments(body)),
        "price": None,
        "price_unit": "USD",
        "sid": sid,
        "status": "queued",
        "subresource_uris": {"media": f"{uri}/Media.json", "feedback": f"{uri}/Feedback.json"},
        "to": to,
        "uri": f"{uri}.json",
    }


def call_resource(account_sid: str, sid: str, from_: str, to: str) -> dict[str, Any]:
    """A new Call resource, status ``queued``."""
    now = now_rfc2822()
    uri = f"/{API_VERSION}/Accounts/{account_sid}/Calls/{sid}"
    return {
        "account_sid": account_sid,
        "annotation": None,
        "answered_by": None,
        "api_version": API_VERSION,
        "caller_name": None,
        "date_created": now,
        "date_updated": now,
        "direction": "outbound-api",
        "duration": None,
        "end_time": None,
        "forwarded_from": None,
        "from": from_,
        "from_formatted": from_,
        "group_sid": None,
        "parent_call_sid": None,
        "phone_number_sid": None,
        "price": None,
        "price_unit": "USD",
        "queue_time": "0",
        "sid": sid,
        "start_time": None,
        "status": "queued",
        "subresource_uris": {"recordings": f"{uri}/Recordings.json"},
        "to": to,
        "to_formatted": to,
        "trunk_sid": None,
        "uri": f"{uri}.json",
    }


def message_plan(to: str) -> list[tuple[str, int | None]]:
    """The statuses (and ErrorCode) a message to ``to`` goes through after ``queued``."""
    failure = TEST_NUMBERS.get(to[-4:])
    if failure is None:
        return [("sent", None), ("delivered", None)]
    status, code = failure
    if status == "failed":
        return [(status, code)]
    return [("sent", None), (status, code)]


def error_text(code: int) -> str | None:
    """The resource's ``error_message`` for a sandbox delivery error."""
    return _ERROR_TEXT.get(code)


def inbound_form(
    account_sid: str,
    resource: dict[str, Any],
    media_urls: Sequence[str],
    content_types: Sequence[str | None] = (),
) -> list[tuple[str, str]]:
    """The form Twilio POSTs for an incoming SMS/MMS (no Messaging Service).

    ``content_types[N]`` is ``MediaContentType{N}``; where missing or None, it is
    guessed from the URL (``image/jpeg`` when nothing fits).
    """
    sid, from_, to = resource["sid"], resource["from"], resource["to"]
    params = [
        ("ToCountry", country(to)),
        ("ToState", ""),
        ("SmsMessageSid", sid),
        ("NumMedia", str(len(media_urls))),
        ("ToCity", ""),
        ("FromZip", ""),
        ("SmsSid", sid),
        ("FromState", ""),
        ("SmsStatus", "received"),
        ("FromCity", ""),
        ("Body", resource["body"]),
        ("FromCountry", country(from_)),
        ("To", to),
        ("ToZip", ""),
        ("NumSegments", resource["num_segments"]),
        ("MessageSid", sid),
        ("AccountSid", account_sid),
        ("From", from_),
        ("ApiVersion", API_VERSION),
    ]
    for index, url in enumerate(media_urls):
        given = content_types[index] if index < len(content_types) else None
        content_type = given or mimetypes.guess_type(url)[0] or "image/jpeg"
        params += [(f"MediaContentType{index}", content_type), (f"MediaUrl{index}", url)]
    return params


def status_form(account_sid: str, resource: dict[str, Any]) -> list[tuple[str, str]]:
    """The form of a message status callback for the resource's current status."""
    sid, status = resource["sid"], resource["status"]
    params = [
        ("SmsSid", sid),
        ("SmsStatus", status),
        ("MessageStatus", status),
        ("To", resource["to"]),
    ]
    if resource["messaging_service_sid"]:
        params.append(("MessagingServiceSid", resource["messaging_service_sid"]))
    params += [("MessageSid", sid), ("AccountSid", account_sid)]
    if resource["from"]:
        params.append(("From", resource["from"]))
    params.append(("ApiVersion", API_VERSION))
    if resource["error_code"] is not None:
        params.append(("ErrorCode", str(resource["error_code"])))
    if status in ("delivered", "undelivered"):
        params.append(("RawDlrDoneDate", utcnow().strftime("%y%m%d%H%M")))
    return params


def call_status_form(
    account_sid: str, resource: dict[str, Any], sequence: int
) -> list[tuple[str, str]]:
    """The form of a call progress callback for the resource's current status.

    https://www.twilio.com/docs/voice/api/call-resource#statuscallback
    """
    params = [
        ("Called", resource["to"]),
        ("Direction", "outbound-api"),
        ("Timestamp", resource["date_updated"]),
        ("CallbackSource", "call-progress-events"),
        ("SequenceNumber", str(sequence)),
        ("CallSid", resource["sid"]),
        ("To", resource["to"]),
        ("ApiVersion", API_VERSION),
        ("CallStatus", resource["status"]),
        ("From", resource["from"]),
        ("AccountSid", account_sid),
        ("Caller", resource["from"]),
    ]
    if resource["status"] == "completed":
        seconds = int(resource["duration"])
        params += [("CallDuration", str(seconds)), ("Duration", str(-(-seconds // 60)))]
    return params


def parse_date_filter(value: str) -> datetime | date:
    """A ``DateSent`` filter value: ``YYYY-MM-DD`` or ISO 8601 (the SDK sends the latter)."""
    if "T" in value:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    return date.fromisoformat(value)


def date_sent_matches(sent: datetime, op: str, bound: datetime | date) -> bool:
    """``DateSent`` (op ""), ``DateSent>`` (on or after) or ``DateSent<`` (on or before)."""
    if isinstance(bound, datetime):
        if op == ">":
            return sent >= bound
        if op == "<":
            return sent <= bound
        return sent == bound
    day = sent.date()
    if op == ">":
        return day >= bound
    if op == "<":
        return day <= bound
    return day == bound


def twiml_messages(text: str) -> list[str]:
    """The texts of ``<Message>`` verbs in a TwiML answer (empty if it is not TwiML)."""
    try:
        # The hub's own answer; the stdlib's expat limits entity expansion.
        root = ET.fromstring(text)  # noqa: S314
    except ET.ParseError:
        return []
    texts = []
    for element in root.iter("Message"):
        body = element.findtext("Body")
        texts.append(body if body is not None else (element.text or "").strip())
    return [t for t in texts if t]


#: Query parameters of paging, left out when a page names its neighbours.
PAGING = frozenset({"Page", "PageSize", "PageToken"})


def paging(query: Mapping[str, str]) -> tuple[int, int]:
    """``(page, page_size)`` of a list request; ValueError if not whole numbers."""
    page_size = min(max(int(query.get("PageSize", "50")), 1), 1000)
    return max(int(query.get("Page", "0")), 0), page_size


def list_page(
    key: str,
    selected: Sequence[dict[str, Any]],
    base: str,
    filters: Sequence[tuple[str, str]],
    page: int,
    page_size: int,
) -> dict[str, Any]:
    """One page of a list, newest first, with Twilio's paging fields.

    https://www.twilio.com/docs/usage/twilios-response#response-formats-list-paging-information
    """
    start = page * page_size
    chunk = list(selected[start : start + page_size])

    def page_uri(number: int, token: str | None = None) -> str:
        params = [*filters, ("PageSize", str(page_size)), ("Page", str(number))]
        if token:
            params.append(("PageToken", token))
        return f"{base}?{urlencode(params)}"

    more = start + page_size < len(selected)
    return {
        "end": start + max(len(chunk) - 1, 0),
        "first_page_uri": page_uri(0),
        key: chunk,
        "next_page_uri": page_uri(page + 1, "PA" + chunk[-1]["sid"]) if more else None,
        "page": page,
        "page_size": page_size,
        "previous_page_uri": page_uri(page - 1) if page > 0 else None,
        "start": start,
        "uri": page_uri(page),
    }
