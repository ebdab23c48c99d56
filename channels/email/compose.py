"""Outgoing email, built before it is sent (RFC 5322, MIME). Pure: no I/O.

The Message-ID is made here, with our own domain (``email.utils.make_msgid``), so the
outbox stores it with the event *before* SMTP DATA (RELIABILITY 17): replies, bounces and
the copy in the Sent folder then find the event, and a resend after an unknown outcome
carries the same id. A reply carries ``In-Reply-To`` (the parent's id), ``References``
(the parent's References, else its In-Reply-To, then its id; RFC 5322 3.6.4) and a
``Re:`` subject.

The MIME shape is what mail clients send: ``text/plain`` alone; or
``multipart/alternative`` (text, HTML); HTML with inline images as
``multipart/related``; with files, all of it inside ``multipart/mixed``. HTML without a
text version gets one made from it (spam filters penalize HTML-only mail).
"""

from __future__ import annotations

import dataclasses
import email.utils
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

from channels.email.errors import ComposeError
from channels.email.htmltext import html_to_text
from channels.email.mime import message_ids
from timeline.events import Attachment, Event, utcnow

#: Long threads make References grow without end; keep the root and the newest ids,
#: as Thunderbird and others do.
MAX_REFERENCES = 20
_RE = re.compile(r"^\s*re\s*:", re.IGNORECASE)


@dataclasses.dataclass(frozen=True, slots=True)
class ReplyContext:
    """The message being answered: its id, its own threading headers and subject."""

    message_id: str
    references: tuple[str, ...] = ()
    in_reply_to: tuple[str, ...] = ()
    subject: str | None = None

    @classmethod
    def from_event(cls, event: Event) -> ReplyContext:
        """The context of a stored email event (``external_id`` and ``data`` of ``parse``)."""
        if not event.external_id:
            raise ComposeError("the event to answer has no Message-ID")
        data: Mapping[str, Any] = event.data
        in_reply_to = data.get("in_reply_to")
        return cls(
            message_id=event.external_id,
            references=tuple(data.get("references") or ()),
            in_reply_to=(in_reply_to,) if in_reply_to else (),
            subject=event.subject,
        )

    def references_for_reply(self) -> tuple[str, ...]:
        """The reply's References (RFC 5322 3.6.4), at most :data:`MAX_REFERENCES` ids."""
        base = self.references or (self.in_reply_to if len(self.in_reply_to) == 1 else ())
        refs = tuple(dict.fromkeys((*base, self.message_id)))
        if len(refs) > MAX_REFERENCES:
            refs = (refs[0], *refs[-(MAX_REFERENCES - 1) :])
        return refs


def reply_subject(subject: str | None) -> str:
    """``Re: subject``, without piling up ``Re: Re:``."""
    subject = (subject or "").strip()
    return subject if _RE.match(subject) else f"Re: {subject}".rstrip()


def make_message_id(domain: str) -> str:
    """A new, unique Message-ID in our ``domain`` (``<time.pid.random@domain>``)."""
    if not domain:
        raise ComposeError("a Message-ID needs a domain")
    return email.utils.make_msgid(domain=domain)


def _address(value: str) -> Address:
    try:
        header = default_policy.header_factory("To", value)
        addresses = header.addresses
    except Exception as exc:  # the header parser's errors vary
        raise ComposeError(f"not an address: {type(exc).__name__}") from exc
    if len(addresses) != 1 or "@" not in addresses[0].addr_spec:
        raise ComposeError("expected exactly one address")
    address: Address = addresses[0]
    return address


def _add_file(target: EmailMessage, attachment: Attachment, *, related: bool) -> None:
    if attachment.content is None:
        raise ComposeError(f"attachment {attachment.filename!r} has no content to send")
    maintype, _, subtype = attachment.content_type.partition("/")
    if not subtype:
        maintype, subtype = "application", "octet-stream"
    kwargs: dict[str, Any] = {"filename": attachment.filename}
    if related:
        kwargs.update(cid=f"<{attachment.content_id}>", disposition="inline")
        target.add_related(attachment.content, maintype, subtype, **kwargs)
    else:
        target.add_attachment(attachment.content, maintype, subtype, **kwargs)


def compose_message(
    *,
    from_addr: str,
    to: Sequence[str],
    subject: str,
    text: str | None = None,
    html: str | None = None,
    cc: Sequence[str] = (),
    bcc: Sequence[str] = (),
    reply_to: str | None = None,
    attachments: Sequence[Attachment] = (),
    reply: ReplyContext | None = None,
    message_id: str | None = None,
    date: datetime | None = None,
    headers: Mapping[str, str] | None = None,
) -> EmailMessage:
    """Build an outgoing message; its ``Message-ID`` is set before anything is sent.

    ``from_addr`` may carry a name (``Support <support@example.com>``); its domain makes
    the Message-ID unless ``message_id`` is given. ``reply`` makes it an answer
    (RFC 5322 3.6.4): In-Reply-To, References, and ``Re:`` on ``subject`` (a subject
    already starting with ``Re:`` is kept). Attachments with a ``content_id`` are inline
    parts of the HTML (``<img src="cid:...">``). ``headers`` adds e.g.
    ``List-Unsubscribe`` (RFC 8058) or ``Auto-Submitted`` (RFC 3834). Bcc is kept in the
    message for the envelope; ``smtp.send_message`` strips it. Raises
    :class:`ComposeError` for bad addresses, CR/LF in headers or contentless attachments.
    """
    if not to and not cc and not bcc:
        raise ComposeError("no recipients")
    sender = _address(from_addr)
    for value in (*to, *cc, *bcc, *([reply_to] if reply_to else [])):
        _address(value)
    msg = EmailMessage(policy=default_policy)
    try:
        msg["From"] = from_addr
        if to:
            msg["To"] = ", ".join(to)
        if cc:
            msg["Cc"] = ", ".join(cc)
        if bcc:
            msg["Bcc"] = ", ".join(bcc)
        if reply_to:
            msg["Reply-To"] = reply_to
        msg["Subject"] = reply_subject(subject) if reply is not None else subject
        msg["Date"] = email.utils.format_datetime(date or utcnow())
        ids = message_ids(message_id) if message_id else [make_message_id(sender.domain)]
        if not ids:
            raise ComposeError("message_id must look like <id@domain>")
        msg["Message-ID"] = ids[0]
        if reply is not None:
            msg["In-Reply-To"] = reply.message_id
            msg["References"] = " ".join(reply.references_for_reply())
        msg["MIME-Version"] = "1.0"
        for name, value in (headers or {}).items():
            msg[name] = value
    except ComposeError:
        raise
    except Exception as exc:  # ValueError for CR/LF, HeaderParseError, ...
        raise ComposeError(f"invalid header: {exc}") from exc

    inline = [a for a in attachments if a.content_id]
    files = [a for a in attachments if not a.content_id]
    if inline and html is None:
        raise ComposeError("inline (content_id) attachments need an HTML body")
    if html is not None and text is None:
        text = html_to_text(html)
    msg.set_content(text or "")
    if html is not None:
        msg.add_alternative(html, subtype="html")
        parts = msg.get_payload()
        html_part = parts[1] if isinstance(parts, list) else None
        assert isinstance(html_part, EmailMessage)
        for attachment in inline:
            _add_file(html_part, attachment, related=True)
    for attachment in files:
        _add_file(msg, attachment, related=False)
    return msg


def message_id_of(msg: EmailMessage) -> str:
    """The Message-ID of a composed message, as the outbox stores it."""
    ids = message_ids(msg.get("Message-ID"))
    if not ids:
        raise ComposeError("the message has no Message-ID")
    return ids[0]
