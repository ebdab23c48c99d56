"""Twilio's urlencoded forms as ordered ``(key, value)`` pairs.

Twilio posts ``application/x-www-form-urlencoded`` bodies whose keys may repeat; the
signature covers every value of every key. So forms travel through this package as a
list of pairs, never as a ``dict`` that would keep only one value per key. Anything with
Starlette's ``multi_items()`` (its ``FormData``), a mapping or an iterable of pairs is
accepted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, TypeAlias, cast, runtime_checkable
from urllib.parse import parse_qsl, urlencode

from channels.twilio.errors import PayloadError

__all__ = ["Form", "decode_form", "encode_form", "form_items"]


@runtime_checkable
class _MultiItems(Protocol):
    def multi_items(self) -> list[tuple[str, Any]]: ...


#: A webhook form: Starlette ``FormData``, a mapping, or ``(key, value)`` pairs.
Form: TypeAlias = _MultiItems | Mapping[str, str] | Iterable[tuple[str, str]]


def form_items(form: Form) -> list[tuple[str, str]]:
    """The form's ``(key, value)`` pairs in order, repeated keys kept.

    Raises :class:`PayloadError` for a value that is not text (a file upload).
    """
    # A duck-typed check: isinstance against a runtime_checkable Protocol costs ~17 us.
    multi_items = getattr(form, "multi_items", None)
    if callable(multi_items):
        pairs: Iterable[tuple[str, Any]] = multi_items()
    elif isinstance(form, Mapping):
        pairs = form.items()
    else:
        pairs = cast("Iterable[tuple[str, Any]]", form)
    items: list[tuple[str, str]] = []
    for key, value in pairs:
        if not isinstance(key, str) or not isinstance(value, str):
            raise PayloadError(str(key), "expected a text value")
        items.append((key, value))
    return items


def decode_form(body: bytes) -> list[tuple[str, str]]:
    """Parse a raw urlencoded body into pairs; :class:`PayloadError` if it is not UTF-8."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("body", "not UTF-8 urlencoded form data") from None
    return parse_qsl(text, keep_blank_values=True)


def encode_form(items: Iterable[tuple[str, str]]) -> bytes:
    """Encode pairs the way Twilio does (``application/x-www-form-urlencoded``)."""
    return urlencode(list(items)).encode("ascii")
