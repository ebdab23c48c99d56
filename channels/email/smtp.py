"""Sending email over SMTP (RFC 5321) with aiosmtplib, failures classified for the outbox.

One call is one SMTP session: connect (``tls``: implicit TLS, RFC 8314; ``starttls``:
STARTTLS required, RFC 3207; ``none``: plain, for a local relay), optional AUTH, then
MAIL, RCPT per recipient, DATA. The transaction is driven step by step rather than with
``send_message`` because the step decides what a failure means:

- a 4xx reply (RFC 5321 4.2.1), or no connection at all -> :class:`TransientSendError`:
  retry later with backoff (:func:`send_with_retry` does, for a few quick attempts);
- a 5xx reply -> :class:`PermanentSendError` with the server's code and reason; a 552
  to RCPT counts as 452, as RFC 5321 4.5.3.1.10 asks;
- the connection lost while the server answers DATA -> :class:`OutcomeUnknownError`:
  the message may be on its way, so no blind resend (DESIGN.md, "Outbound").

Some recipients refused and others accepted is a success that lists the refused ones in
:attr:`SendResult.refused` (with each code) for the caller to record.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import TYPE_CHECKING, Literal

import aiosmtplib
from aiosmtplib.email import extract_recipients, extract_sender, flatten_message

from channels.email.backoff import Backoff
from channels.email.errors import (
    AuthenticationError,
    OutcomeUnknownError,
    PermanentSendError,
    SendError,
    TransientSendError,
)
from channels.email.mime import message_ids

if TYPE_CHECKING:
    from config.settings import Settings

log = logging.getLogger(__name__)

Security = Literal["starttls", "tls", "none"]
_SECURITY: dict[str, Security] = {"starttls": "starttls", "tls": "tls", "none": "none"}
#: Errors meaning "no usable connection": the message was certainly not handed over.
_CONNECTION_ERRORS = (
    aiosmtplib.SMTPConnectError,
    aiosmtplib.SMTPServerDisconnected,
    aiosmtplib.SMTPTimeoutError,
    ssl.SSLError,
    OSError,
    TimeoutError,
)


@dataclasses.dataclass(frozen=True, slots=True)
class SmtpConfig:
    """Where and how to send. ``tls_context`` overrides the system trust store."""

    host: str
    port: int = 587
    security: Security = "starttls"
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    timeout: float = 60.0
    tls_context: ssl.SSLContext | None = None
    local_hostname: str | None = None

    def __post_init__(self) -> None:
        if self.security not in ("starttls", "tls", "none"):
            raise ValueError(f"SMTP security must be starttls, tls or none, not {self.security!r}")

    @classmethod
    def from_settings(
        cls, settings: Settings, *, tls_context: ssl.SSLContext | None = None
    ) -> SmtpConfig:
        """The SMTP settings (``SMTP_HOST``, ``SMTP_PORT``, ``SMTP_SECURITY``, ...)."""
        if not settings.smtp_host:
            raise ValueError("SMTP_HOST is not set")
        security = _SECURITY.get(settings.smtp_security)
        if security is None:
            raise ValueError(
                f"SMTP_SECURITY must be starttls, tls or none, not {settings.smtp_security!r}"
            )
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            security=security,
            username=settings.smtp_username,
            password=settings.smtp_password,
            tls_context=tls_context,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class SendResult:
    """A message the server accepted (for at least one recipient)."""

    message_id: str | None
    accepted: tuple[str, ...]
    #: Recipients the server refused at RCPT: address -> (code, reason).
    refused: Mapping[str, tuple[int, str]]
    #: The server's answer to DATA, often with its queue id.
    response: str


def _classify(stage: str, code: int, reason: str, recipients: tuple[str, ...] = ()) -> SendError:
    if stage == "rcpt" and code == 552:
        code = 452
    message = f"SMTP {stage} refused: {code} {reason}".strip()
    if 400 <= code < 500:
        return TransientSendError(message, code=code, reason=reason, recipients=recipients)
    if stage == "auth" and code >= 500:
        return AuthenticationError(message, code=code, reason=reason, recipients=recipients)
    if 500 <= code < 600:
        return PermanentSendError(message, code=code, reason=reason, recipients=recipients)
    return TransientSendError(message, code=code, reason=reason, recipients=recipients)


def _as_message(message: EmailMessage | bytes) -> EmailMessage:
    if isinstance(message, EmailMessage):
        return message
    parsed = BytesParser(policy=policy.default).parsebytes(message)
    assert isinstance(parsed, EmailMessage)
    return parsed


async def _connect(config: SmtpConfig) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname=config.host,
        port=config.port,
        use_tls=config.security == "tls",
        start_tls=config.security == "starttls",
        tls_context=config.tls_context,
        timeout=config.timeout,
        local_hostname=config.local_hostname,
    )
    stage = "connect"
    try:
        await client.connect()
        if config.username is not None:
            stage = "auth"
            await client.login(config.username, config.password or "")
    except Exception as exc:
        await _close(client)
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            raise _classify(stage, exc.code, exc.message) from exc
        if isinstance(exc, _CONNECTION_ERRORS):
            raise TransientSendError(f"SMTP {stage} failed: {type(exc).__name__}") from exc
        if isinstance(exc, aiosmtplib.SMTPException):
            # STARTTLS not offered, no common AUTH mechanism: retrying will not help.
            error = AuthenticationError if stage == "auth" else PermanentSendError
            raise error(f"SMTP {stage} impossible: {exc}") from exc
        raise
    return client


async def _close(client: aiosmtplib.SMTP) -> None:
    client.close()
    # The transport closes its socket on the next loop iteration: let it run, so a
    # loop that ends right after us does not leave the socket open.
    await asyncio.sleep(0)


async def _transaction(
    client: aiosmtplib.SMTP, msg: EmailMessage, sender: str, recipients: Sequence[str]
) -> tuple[dict[str, tuple[int, str]], str]:
    try:
        utf8 = not (sender + "".join(recipients)).isascii()
        if utf8 and not client.supports_extension("smtputf8"):
            raise PermanentSendError("non-ASCII address, but the server lacks SMTPUTF8")
        eight_bit = client.supports_extension("8bitmime")
        flat = flatten_message(msg, utf8=utf8, cte_type="8bit" if eight_bit else "7bit")
        options = [*(["SMTPUTF8"] if utf8 else []), *(["BODY=8BITMIME"] if eight_bit else [])]
        if client.supports_extension("size"):
            options.insert(0, f"SIZE={len(flat)}")
        encoding = "utf-8" if utf8 else "ascii"
        try:
            await client.mail(sender, options=options, encoding=encoding)
        except aiosmtplib.SMTPResponseException as exc:
            raise _classify("mail", exc.code, exc.message) from exc
        refused: dict[str, tuple[int, str]] = {}
        for recipient in recipients:
            try:
                await client.rcpt(recipient, encoding=encoding)
            except aiosmtplib.SMTPRecipientRefused as exc:
                refused[recipient] = (exc.code, exc.message)
                log.debug("SMTP RCPT %s refused: %s %s", recipient, exc.code, exc.message)
        if len(refused) == len(recipients):
            codes = [c for c, _ in refused.values()]
            worst = next((c for c in codes if 400 <= c < 500 or c == 552), codes[0])
            reason = next(r for c, r in refused.values() if c == worst)
            raise _classify("rcpt", worst, reason, tuple(refused))
    except _CONNECTION_ERRORS as exc:
        raise TransientSendError(f"SMTP connection lost before DATA: {exc}") from exc
    try:
        response = await client.data(flat)
    except aiosmtplib.SMTPResponseException as exc:
        raise _classify("data", exc.code, exc.message) from exc
    except _CONNECTION_ERRORS as exc:
        raise OutcomeUnknownError(
            f"SMTP connection lost during DATA ({type(exc).__name__}): outcome unknown"
        ) from exc
    return refused, response.message


async def send_message(
    message: EmailMessage | bytes,
    config: SmtpConfig,
    *,
    sender: str | None = None,
    recipients: Sequence[str] | None = None,
) -> SendResult:
    """Send one message in one SMTP session (RFC 5321); see the module for the errors.

    ``message`` is a composed :class:`EmailMessage` or the raw bytes the outbox stored.
    The envelope defaults to the Sender/From and the To/Cc/Bcc addresses; Bcc is not
    transmitted. Raises :class:`TransientSendError`, :class:`PermanentSendError`
    (:class:`AuthenticationError`) or :class:`OutcomeUnknownError`.
    """
    msg = _as_message(message)
    try:
        envelope_from = sender or extract_sender(msg)
        envelope_to = list(recipients) if recipients is not None else extract_recipients(msg)
    except (ValueError, TypeError) as exc:
        raise PermanentSendError(f"cannot read the envelope from the message: {exc}") from exc
    if not envelope_from or not envelope_to:
        raise PermanentSendError("the message has no sender or no recipients")
    message_id = next(iter(message_ids(msg.get("Message-ID"))), None)
    client = await _connect(config)
    try:
        refused, response = await _transaction(client, msg, envelope_from, envelope_to)
    finally:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            if client.is_connected:
                await asyncio.wait_for(client.quit(), timeout=5)
        await _close(client)
    accepted = tuple(r for r in envelope_to if r not in refused)
    log.info(
        "SMTP accepted %s for %d recipient(s), %d refused", message_id, len(accepted), len(refused)
    )
    log.debug("SMTP accepted %s for %s", message_id, accepted)
    return SendResult(message_id, accepted, refused, response)


async def send_with_retry(
    message: EmailMessage | bytes,
    config: SmtpConfig,
    *,
    attempts: int = 3,
    backoff: Backoff = Backoff(base=2.0, maximum=60.0),  # noqa: B008 - frozen, immutable
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    sender: str | None = None,
    recipients: Sequence[str] | None = None,
) -> SendResult:
    """:func:`send_message`, retrying transient failures up to ``attempts`` times.

    Only :class:`TransientSendError` is retried (nothing was handed over); permanent
    errors and unknown outcomes are raised at once. For long outages let the outbox
    reschedule the row instead of sleeping here.
    """
    for attempt in range(attempts):
        try:
            return await send_message(message, config, sender=sender, recipients=recipients)
        except TransientSendError as exc:
            if attempt + 1 >= attempts:
                raise
            delay = backoff.delay(attempt)
            log.warning("SMTP transient failure (%s), retry in %.1f s", exc.code or exc, delay)
            await sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
