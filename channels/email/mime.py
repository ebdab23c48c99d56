"""Tolerant readers for MIME headers and text, shared by the parsers.

Real mail breaks every rule: headers in raw 8-bit, encoded words in unknown charsets
(RFC 2047), bodies whose declared charset is wrong, ids without angle brackets. Each
reader here returns the best it can read and appends a short warning (never a body or an
address: warnings are logged and stored) instead of raising. Every string that leaves
this module is valid Unicode without lone surrogates or NUL, so it can be stored as is.
"""

from __future__ import annotations

import codecs
import email.header
import email.utils
import mimetypes
import re
from collections.abc import Iterable
from email.headerregistry import AddressHeader
from email.message import Message
from typing import cast

#: Above this many characters an address header is split by the fast stdlib routine
#: instead of the full RFC 5322 parser, which needs about a second for 5,000 addresses.
_LONG_ADDRESS_HEADER = 32_000
_MSG_ID = re.compile(r"<([^<>]*)>")
_FOLD = re.compile(r"\r?\n[ \t]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def clean_text(value: str) -> str:
    """``value`` with raw bytes kept as surrogates re-decoded, and NUL removed."""
    if _SURROGATE.search(value):
        raw = value.encode("utf-8", "surrogateescape")
        value = decode_bytes(raw, None, [])
    return value.replace("\x00", "")


def _known_codec(charset: str | None) -> str | None:
    if not charset:
        return None
    try:
        return codecs.lookup(charset.strip().strip('"').lower()).name
    except (LookupError, ValueError):
        return None


def decode_bytes(data: bytes, charset: str | None, warnings: list[str], what: str = "") -> str:
    """Decode ``data`` declared as ``charset``, falling back to UTF-8, then Windows-1252.

    A wrong declaration is common (Latin-1 text labelled UTF-8, UTF-8 labelled ASCII):
    the declared charset is tried strictly first, then the usual suspects; Latin-1 (which
    accepts any byte) ends the chain. Each fallback adds a warning naming ``what``.
    """
    codec = _known_codec(charset)
    if charset and codec is None:
        warnings.append(f"unknown charset {charset[:40]!r}{what}")
    candidates = [c for c in (codec, "utf-8", "cp1252") if c]
    for index, candidate in enumerate(dict.fromkeys(candidates)):
        try:
            text = data.decode(candidate)
        except (UnicodeError, LookupError, ValueError, TypeError):
            continue
        if index > 0 and codec is not None:
            warnings.append(f"text was not {charset!s:.40}, read as {candidate}{what}")
        return text.replace("\x00", "")
    warnings.append(f"undecodable text read as latin-1{what}")
    return data.decode("latin-1").replace("\x00", "")


def _raw(msg: Message, name: str) -> str | None:
    wanted = name.lower()
    for key, value in msg.raw_items():
        if key.lower() == wanted:
            return _FOLD.sub(" ", str(value)).strip()
    return None


def raw_header(msg: Message, name: str) -> str | None:
    """The first ``name`` header as received, unfolded, not decoded (8-bit bytes are)."""
    value = _raw(msg, name)
    return None if value is None else clean_text(value)


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words leniently (unknown charsets, broken encodings)."""
    if "=?" not in value:
        return clean_text(value)
    try:
        parts = email.header.decode_header(value)
    except Exception:  # HeaderParseError, binascii.Error, LookupError, ...
        return clean_text(value)
    out: list[str] = []
    for chunk, charset in parts:
        if isinstance(chunk, bytes):
            out.append(decode_bytes(chunk, charset, []))
        else:
            out.append(chunk)
    return clean_text("".join(out))


def header_text(msg: Message, name: str, warnings: list[str]) -> str | None:
    """The first ``name`` header decoded (RFC 2047), or ``None`` if there is none."""
    try:
        value = msg.get(name)
    except Exception as exc:  # the header parser has raised on odd input
        warnings.append(f"unreadable {name} header ({type(exc).__name__})")
        raw = raw_header(msg, name)
        return None if raw is None else decode_words(raw)
    if value is None:
        return None
    raw = _raw(msg, name)
    if raw is not None and _SURROGATE.search(raw):
        # Raw 8-bit in a header (RFC 6532 or just careless): the header parser would turn
        # it into U+FFFD; decode it as UTF-8 or Windows-1252 instead.
        return decode_words(clean_text(raw)).strip()
    return clean_text(str(value)).strip()


def _valid_addr(addr: str) -> bool:
    local, at, domain = addr.rpartition("@")
    return bool(at and local and domain) and not any(c.isspace() for c in addr)


def address_list(msg: Message, name: str, warnings: list[str]) -> list[tuple[str, str]]:
    """``(display name, addr-spec)`` of every address in all ``name`` headers (RFC 5322 3.4).

    Groups are flattened; entries without a usable ``local@domain`` are skipped with a
    warning. Addresses keep their case: ``timeline.identity`` normalizes them.
    """
    found: list[tuple[str, str]] = []
    values: list[str] = []
    for key, raw in msg.raw_items():
        if key.lower() == name.lower():
            values.append(_FOLD.sub(" ", str(raw)))
    if not values:
        return found
    pairs: Iterable[tuple[str, str]]
    try:
        if sum(len(v) for v in values) > _LONG_ADDRESS_HEADER:
            raise ValueError("long header")
        parsed = msg.get_all(name) or []
        headers = [cast(AddressHeader, h) for h in parsed]
        pairs = [(a.display_name, a.addr_spec) for h in headers for a in h.addresses]
    except Exception:  # fall back to the lenient stdlib splitter
        pairs = [
            (decode_words(n), a)
            for n, a in email.utils.getaddresses([decode_words(v) for v in values])
        ]
    skipped = 0
    for display, addr in pairs:
        addr = clean_text(addr).strip().strip("<>").strip()
        if not _valid_addr(addr):
            skipped += 1
            continue
        found.append((clean_text(display).strip(), addr))
    if skipped:
        warnings.append(f"{skipped} unreadable address(es) in {name}")
    return found


def message_ids(value: str | None) -> list[str]:
    """The msg-ids in a Message-ID, In-Reply-To or References value (RFC 5322 3.6.4).

    Each keeps its angle brackets and its case (ids compare case-sensitively); folding
    whitespace inside an id is removed. A value without brackets (seen from broken
    mailers) yields its ``@``-containing words.
    """
    if not value:
        return []
    ids = ["<" + re.sub(r"\s+", "", m) + ">" for m in _MSG_ID.findall(value)]
    ids = [i for i in ids if i != "<>"]
    if not ids and "<" not in value:
        ids = [f"<{word.strip('<>')}>" for word in value.split() if "@" in word]
    return [clean_text(i) for i in dict.fromkeys(ids)]


def safe_filename(name: str | None, content_type: str, index: int, *, inline: bool) -> str:
    """A storable file name: no directories, no control characters, at most 200 chars.

    A part without a name gets ``attachment-N.ext`` (``inline-N.ext`` for inline parts),
    the extension guessed from the content type.
    """
    if name:
        name = decode_words(name)
        name = name.replace("\\", "/").rsplit("/", 1)[-1]
        name = _CONTROL.sub("", name).strip().strip(".")
    if not name:
        ext = mimetypes.guess_extension(content_type, strict=False) or ".bin"
        name = f"{'inline' if inline else 'attachment'}-{index}{ext}"
    if len(name) > 200:
        stem, dot, ext = name.rpartition(".")
        name = (stem[:190] + dot + ext[:9]) if dot and len(ext) < 10 else name[:200]
    return name
