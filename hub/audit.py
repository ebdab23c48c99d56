"""Audit records from the web layer, and log lines that input cannot forge.

``record(conn_or_db, action, ...)`` appends to the audit log (``timeline.audit``): pass the
write transaction's connection to make the record part of the change (exports, erasures,
merges, token and role changes), or the :class:`~timeline.db.Database` for a record of
its own (denials; the console's logins). :func:`request_record` adds the agent and the
client address of a request.

Log injection (OWASP ASVS 5.0 V16.4.1, CWE-117): a CR or LF in a logged value (a path, a
token someone tried, a customer's name) must not start a line that looks like ours.
:func:`install_log_escaping` makes every ``LogRecord`` of the process escape control
characters in its formatted message (message and args alike), whatever handler or
formatter prints it; :class:`EscapingFilter` does the same for one handler.
Tracebacks are printed apart from the message and keep their lines.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request

from timeline import audit as audit_log
from timeline.db import Database

#: C0 controls but TAB, DEL, C1 controls and the Unicode line/paragraph separators:
#: everything a terminal, a log shipper or a viewer may take as a line break or escape.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``text`` with control characters as visible escapes (``\\r``, ``\\n``, ``\\x1b``)."""

    def one(match: re.Match[str]) -> str:
        char = match.group()
        named = {"\n": "\\n", "\r": "\\r"}
        if char in named:
            return named[char]
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _CONTROL.sub(one, text)


class EscapingLogRecord(logging.LogRecord):
    """A log record whose formatted message never spans lines."""

    def getMessage(self) -> str:
        """The message with its args, control characters escaped."""
        return escape_controls(super().getMessage())


class EscapingFilter(logging.Filter):
    """A handler filter that escapes control characters of every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Replace message and args by the escaped, formatted message."""
        if not isinstance(record, EscapingLogRecord):
            record.msg = escape_controls(record.getMessage())
            record.args = None
        return True


def install_log_escaping() -> None:
    """Make every new log record of this process an :class:`EscapingLogRecord` (idempotent)."""
    factory = logging.getLogRecordFactory()
    if factory is EscapingLogRecord or getattr(factory, "escapes_controls", False):
        return
    if factory is logging.LogRecord:
        logging.setLogRecordFactory(EscapingLogRecord)
        return

    def escaping(*args: Any, **kwargs: Any) -> logging.LogRecord:
        made = factory(*args, **kwargs)
        made.msg = escape_controls(made.getMessage())
        made.args = None
        return made

    escaping.escapes_controls = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(escaping)


def client_ip(request: Request) -> str | None:
    """The client's address as the server saw it (uvicorn applies trusted proxy headers)."""
    return request.client.host if request.client else None


async def record(
    target: AsyncConnection | Database,
    action: str,
    *,
    agent_id: str | None = None,
    customer_id: str | None = None,
    detail: Mapping[str, Any] | None = None,
    ip: str | None = None,
) -> str:
    """Append an audit record (see ``timeline.audit.record``); returns its id."""
    return await audit_log.record(
        target, action, agent_id=agent_id, customer_id=customer_id, detail=detail, ip=ip
    )


async def request_record(
    target: AsyncConnection | Database,
    request: Request,
    action: str,
    *,
    agent_id: str | None,
    customer_id: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> str:
    """An audit record of ``request``'s agent, from its client address."""
    return await record(
        target,
        action,
        agent_id=agent_id,
        customer_id=customer_id,
        detail=detail,
        ip=client_ip(request),
    )
