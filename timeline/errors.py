"""Errors of the timeline domain.

::

    TimelineError
    ├── InvalidIdentity        a phone, email or handle that cannot be normalized (field, value)
    ├── NotFound               no such customer, event, document or merge
    ├── Conflict               the operation contradicts the stored state (merge into itself...)
    └── IdempotencyMismatch    an Idempotency-Key reused with a different request
"""

from __future__ import annotations


class TimelineError(Exception):
    """Base of the timeline's errors."""


class InvalidIdentity(TimelineError):
    """An identity that cannot be normalized; ``field`` names where it came from."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFound(TimelineError):
    """No such object; ``what`` is its kind (customer, event, document, merge)."""

    def __init__(self, what: str, ident: str) -> None:
        super().__init__(f"no {what} {ident!r}")
        self.what = what
        self.ident = ident


class Conflict(TimelineError):
    """The request contradicts the stored state."""


class IdempotencyMismatch(TimelineError):
    """The same Idempotency-Key came with a different request."""
