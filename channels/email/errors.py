"""Errors of the email channel.

Parsing never raises (a malformed message is returned with warnings); these are the
errors of composing, sending and reading mail. Library errors (aiosmtplib, aioimaplib,
``ssl``, ``OSError``) are wrapped where they cross into our code (``raise ... from exc``),
so callers catch only these::

    EmailError
    ├── ComposeError (ValueError)        a message we cannot build: CR/LF in a header, ...
    ├── SendError                        SMTP; ``code``/``reason`` as the server said them
    │   ├── TransientSendError           4xx or no connection: retry later with backoff
    │   ├── PermanentSendError           5xx: do not retry; ``reason`` is the server's
    │   │   └── AuthenticationError      535 and friends: the configuration is wrong
    │   └── OutcomeUnknownError          the connection died after DATA was sent: the
    │                                    server may have accepted it; reconcile, no blind resend
    └── ImapError
        ├── ImapConnectionError          cannot connect, TLS failed, connection lost,
        │                                timeout: reconnect with backoff
        ├── ImapAuthenticationError      LOGIN refused: the configuration is wrong
        └── ImapCommandError             the server answered NO/BAD to a command
"""

from __future__ import annotations


class EmailError(Exception):
    """Base of every error the email channel raises."""


class ComposeError(EmailError, ValueError):
    """An outgoing message cannot be built from what was given."""


class SendError(EmailError):
    """Sending over SMTP failed.

    ``code`` is the SMTP reply code (``None`` without one, e.g. no connection), ``reason``
    the server's text, ``recipients`` the addresses concerned (empty: all of them).
    """

    #: Whether trying again later may succeed.
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        reason: str = "",
        recipients: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.recipients = recipients


class TransientSendError(SendError):
    """A 4xx reply or a connection failure before the message was handed over."""

    retryable = True


class PermanentSendError(SendError):
    """A 5xx reply: the server will not take this message (RFC 5321 4.2.1)."""


class AuthenticationError(PermanentSendError):
    """The SMTP server refused our login (or we have none and it wants one)."""


class OutcomeUnknownError(SendError):
    """The connection ended while the server was answering DATA.

    The message may have been accepted. The outbox must not resend blindly (DESIGN.md,
    "Outbound"): the Message-ID was stored before sending, so the Sent folder or a
    bounce settles it.
    """


class ImapError(EmailError):
    """Reading a mailbox over IMAP failed."""


class ImapConnectionError(ImapError):
    """No usable connection: refused, TLS failure, timeout or lost; reconnect later."""


class ImapAuthenticationError(ImapError):
    """LOGIN was refused."""


class ImapCommandError(ImapError):
    """The server answered NO or BAD to a command; ``command`` names it."""

    def __init__(self, command: str, result: str, text: str) -> None:
        super().__init__(f"IMAP {command} failed: {result} {text}".rstrip())
        self.command = command
        self.result = result
        self.text = text
