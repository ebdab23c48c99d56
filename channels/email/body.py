"""The readable body and the attachments of a MIME message (RFC 2045-2049, RFC 2387).

The tree is walked leaf by leaf in order. The first inline ``text/plain`` is the text and
the first inline ``text/html`` the HTML; other renderings inside a
``multipart/alternative`` are the same content and are dropped; further inline text
parts in a ``multipart/mixed`` (Apple Mail splits the text around pictures) are appended
to the text. Every other leaf is an attachment, including inline ``cid:`` images of a
``multipart/related`` (the HTML refers to them by ``content_id``), parts without a name
and forwarded messages (``message/rfc822``, kept whole as ``.eml``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from email import policy
from email.message import Message

from channels.email.htmltext import html_to_text
from channels.email.mime import clean_text, decode_bytes, raw_header, safe_filename
from timeline.events import Attachment

MAX_DEPTH = 30
MAX_PARTS = 500
_BODY_TYPES = ("text/plain", "text/html")
#: Other renderings of the body that mail clients add to an alternative.
_ALTERNATIVE_TEXT = frozenset(
    ("text/plain", "text/html", "text/enriched", "text/richtext", "text/watch-html")
)
#: The machine-readable parts of a delivery report: read by ``dsn``, not attachments.
REPORT_PARTS = frozenset(
    (
        "message/delivery-status",
        "message/global-delivery-status",
        "message/rfc822",
        "message/global",
        "text/rfc822-headers",
        "message/rfc822-headers",
    )
)


@dataclasses.dataclass
class Body:
    """What a message says and carries."""

    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = dataclasses.field(default_factory=list)
    #: ``text`` was made from ``html`` because the message had no text part.
    text_from_html: bool = False


def _leaves(
    part: Message, warnings: list[str], depth: int = 0, in_alternative: bool = False
) -> Iterator[tuple[Message, bool]]:
    try:
        payload = part.get_payload()
    except Exception as exc:  # e.g. a NUL in the charset parameter
        warnings.append(f"unreadable MIME part ({type(exc).__name__})")
        return
    if part.get_content_maintype() == "multipart" and isinstance(payload, list):
        if depth >= MAX_DEPTH:
            warnings.append(f"MIME nesting deeper than {MAX_DEPTH}: rest skipped")
            return
        alternative = part.get_content_subtype() == "alternative"
        for child in payload:
            if isinstance(child, Message):
                yield from _leaves(child, warnings, depth + 1, alternative)
        return
    yield part, in_alternative


def _payload_bytes(part: Message) -> bytes:
    if part.get_content_maintype() == "message":
        inner = part.get_payload()
        if isinstance(inner, list) and inner and isinstance(inner[0], Message):
            for pol in (policy.compat32, policy.default):
                try:
                    return inner[0].as_bytes(policy=pol)
                except Exception:  # noqa: S112 - the generator may choke on junk
                    continue
            return b""
    data = part.get_payload(decode=True)
    if isinstance(data, bytes):
        return data
    raw = part.get_payload()
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""


def _text_of(part: Message, warnings: list[str], index: int) -> str:
    try:
        charset = part.get_content_charset()
    except Exception:  # a broken Content-Type parameter list
        charset = None
    return decode_bytes(_payload_bytes(part), charset, warnings, f" (part {index})")


def _attachment(part: Message, ctype: str, index: int, disposition: str | None) -> Attachment:
    try:
        name = part.get_filename()
    except Exception:  # malformed RFC 2231 parameters
        name = None
    cid = raw_header(part, "Content-ID")
    content_id = cid.strip().strip("<>").strip() or None if cid else None
    inline = disposition == "inline" or content_id is not None
    if ctype.startswith("message/") and not name:
        name = f"message-{index}.eml"
    return Attachment(
        filename=safe_filename(name, ctype, index, inline=inline),
        content_type=ctype,
        content=_payload_bytes(part),
        content_id=content_id,
    )


def read_body(msg: Message, warnings: list[str], *, report: bool = False) -> Body:
    """Text, HTML and attachments of ``msg``; problems go to ``warnings``, never raised.

    With ``report`` (a multipart/report, RFC 6522) its machine-readable parts and the
    returned message are left out: ``dsn.parse_dsn`` reads them.
    """
    body = Body()
    texts: list[str] = []
    single = msg.get_content_maintype() != "multipart"
    for index, (part, in_alternative) in enumerate(_leaves(msg, warnings), start=1):
        if index > MAX_PARTS:
            warnings.append(f"more than {MAX_PARTS} MIME parts: rest skipped")
            break
        try:
            ctype = clean_text(part.get_content_type())
            if ctype.startswith("multipart/"):
                warnings.append(f"{ctype} without usable boundary read as text")
                ctype = "text/plain"
            if report and ctype in REPORT_PARTS:
                continue
            disposition = part.get_content_disposition()
            named = part.get_filename() is not None
            is_body = ctype in _BODY_TYPES and (
                single or (disposition != "attachment" and not named)
            )
            if is_body and ctype == "text/plain" and (not texts or not in_alternative):
                texts.append(_text_of(part, warnings, index))
            elif is_body and ctype == "text/html" and body.html is None:
                body.html = _text_of(part, warnings, index)
            elif in_alternative and ctype in _ALTERNATIVE_TEXT and disposition != "attachment":
                continue
            else:
                body.attachments.append(_attachment(part, ctype, index, disposition))
        except Exception as exc:  # one broken part must not lose the rest
            warnings.append(f"unreadable MIME part {index} ({type(exc).__name__})")
    if texts:
        body.text = "\n\n".join(t.strip("\r\n") for t in texts)
    elif body.html is not None:
        body.text = html_to_text(body.html)
        body.text_from_html = True
    return body
