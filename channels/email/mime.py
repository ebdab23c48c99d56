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
from email import policy
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
# The everyday shapes of an address list, which need no full RFC 5322 parser:
# ``a@b.c``, ``Anna Miller <a@b.c>``, ``"Miller, Anna" <a@b.c>``, comma-separated.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_QUOTED = r'"[^"\\\r\n]*"'
_ADDR_SPEC = rf"{_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*"
_SIMPLE_MAILBOX = re.compile(
    rf"\s*(?:(?P<name>(?:{_ATOM}|{_QUOTED})(?:[ \t]+(?:{_ATOM}|{_QUOTED}))*)?[ \t]*"
    rf"<(?P<angle>{_ADDR_SPEC})>|(?P<bare>{_ADDR_SPEC}))\s*(?:,|$)"
)


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


def _index(msg: Message) -> dict[str, list[str]]:
    """The raw headers by lower-cased name, built once per parsed part (never mutated)."""
    found: dict[str, list[str]] | None = vars(msg).get("_commhub_headers")
    if found is None:
        found = {}
        for key, value in msg.raw_items():
            found.setdefault(key.lower(), []).append(str(value))
        vars(msg)["_commhub_headers"] = found
    return found


def _raw(msg: Message, name: str) -> str | None:
    values = _index(msg).get(name.lower())
    return _FOLD.sub(" ", values[0]).strip() if values else None


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
    """The first ``name`` header decoded (RFC 2047), or ``None`` if there is none.

    Read from the raw header, so a message parsed with ``policy.compat32`` decodes only
    what is asked for. Raw 8-bit (RFC 6532 or careless mailers) is read as UTF-8 or
    Windows-1252 by :func:`clean_text`, not turned into U+FFFD.
    """
    raw = raw_header(msg, name)
    if raw is None:
        return None
    try:
        return decode_words(raw).strip()
    except Exception as exc:  # decode_words is tolerant; be safe anyway
        warnings.append(f"unreadable {name} header ({type(exc).__name__})")
        return raw.strip()


def _valid_addr(addr: str) -> bool:
    local, at, domain = addr.rpartition("@")
    return bool(at and local and domain) and not any(c.isspace() for c in addr)


def _simple_addresses(values: list[str]) -> list[tuple[str, str]] | None:
    """The addresses of plain values (see ``_SIMPLE_MAILBOX``), or None for the parser.

    Anything else (encoded words, comments, groups, escapes, 8-bit, obsolete syntax) is
    left to the RFC 5322 parser; for these shapes both give the same pairs.
    """
    pairs: list[tuple[str, str]] = []
    for value in values:
        if "=?" in value:
            return None
        pos, end = 0, len(value.rstrip())
        while pos < end:
            match = _SIMPLE_MAILBOX.match(value, pos)
            if match is None:
                return None
            name = match["name"] or ""
            if '"' in name:
                if name.count('"') != 2 or not (name[0] == name[-1] == '"'):
                    return None
                name = name[1:-1]
            else:
                name = " ".join(name.split())
            pairs.append((name, match["angle"] or match["bare"]))
            pos = match.end()
    return pairs


def _parsed_addresses(name: str, values: list[str]) -> Iterable[tuple[str, str]]:
    try:
        if sum(len(v) for v in values) > _LONG_ADDRESS_HEADER:
            raise ValueError("long header")
        # The full RFC 5322 parser (headerregistry), for the address headers only.
        headers = [cast(AddressHeader, policy.default.header_fetch_parse(name, v)) for v in values]
        return [(a.display_name, a.addr_spec) for h in headers for a in h.addresses]
    except Exception:  # fall back to the lenient stdlib splitter
        return [
            (decode_words(n), a)
            for n, a in email.utils.getaddresses([decode_words(v) for v in values])
        ]


def address_list(msg: Message, name: str, warnings: list[str]) -> list[tuple[str, str]]:
    """``(display name, addr-spec)`` of every address in all ``name`` headers (RFC 5322 3.4).

    Groups are flattened; entries without a usable ``local@domain`` are skipped with a
    warning. Addresses keep their case: ``timeline.identity`` normalizes them.
    """
    found: list[tuple[str, str]] = []
    values = [_FOLD.sub(" ", raw) for raw in _index(msg).get(name.lower(), ())]
    if not values:
        return found
    simple = _simple_addresses(values)
    pairs = simple if simple is not None else _parsed_addresses(name, values)
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
