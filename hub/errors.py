"""Errors of the web layer and how every error becomes JSON.

::

    timeline.idempotency.AnswerError     an answer; rolls back the write it interrupts
    └── ApiError                         status + code + message -> {"error": {...}}

Domain errors map to answers in ``answer_for``: InvalidIdentity -> 422 naming the
field, NotFound -> 404, Conflict -> 409, IdempotencyMismatch -> 422, BadCursor -> 400.
"""

from __future__ import annotations

from typing import Any

from timeline.errors import Conflict, IdempotencyMismatch, InvalidIdentity, NotFound
from timeline.idempotency import Answer, AnswerError
from timeline.store import BadCursor


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The contract's error JSON."""
    return {"error": {"code": code, "message": message, **extra}}


class ApiError(AnswerError):
    """An error answer of the API."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(Answer(status, error_body(code, message, **extra)))
        self.status = status
        self.code = code
        self.message = message


def answer_for(exc: Exception) -> Answer | None:
    """The API answer for a domain error, or None if it is not one."""
    if isinstance(exc, AnswerError):
        return exc.answer
    if isinstance(exc, InvalidIdentity):
        return Answer(422, error_body("invalid_field", exc.message, field=exc.field))
    if isinstance(exc, NotFound):
        return Answer(404, error_body("not_found", str(exc)))
    if isinstance(exc, Conflict):
        return Answer(409, error_body("conflict", str(exc)))
    if isinstance(exc, IdempotencyMismatch):
        return Answer(422, error_body("idempotency_key_reused", str(exc)))
    if isinstance(exc, BadCursor):
        return Answer(400, error_body("bad_cursor", str(exc)))
    return None
