"""Thread keys for email: RFC 5322 3.6.4 ids first, JWZ-style subject fallback last.

A message names its parent in ``In-Reply-To`` and its ancestors in ``References`` (root
first). The thread key is a Message-ID: the key of the first id the store already knows
(the message's own id, then its ancestors root first), else the root of ``References``
(else ``In-Reply-To``), else the message's own id. So a reply that arrives before its
parent gets the parent's (or the root's) id as key, and the parent, arriving later,
finds itself registered under that key.

The store keeps a map ``id -> thread key`` (the JWZ id table). It is fed from
:class:`ThreadDecision`: every id the message named that was unknown (``new_ids``,
insert-if-absent, never overwrite: the first thread to claim an id keeps it) and the
subject key (``subject_key``, upsert: the latest thread with that subject wins). The
lookup is a ``Mapping`` or an async callable that answers for a batch of keys in one
query (:func:`assign_thread_async`).

The subject fallback (for clients that drop ``In-Reply-To``) joins a message only to a
thread with the same normalized subject (``Re:``/``Fwd:``/``AW:``... stripped) *and* the
same participants, and by default only when its subject says it is a reply: two
customers who both write "Invoice" stay apart, and so do two separate issues of one
customer called "Question". Ids compare case-sensitively (RFC 5322); nothing follows
chains of ids, so a self-reference or a cycle in ``References`` cannot loop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence

#: Reply and forward prefixes of common languages, with counters like ``Re[2]:``.
_PREFIX = re.compile(
    r"^\s*(?:(?:re|fwd?|aw|wg|sv|vs|antw|tr|rif|ref|odp|res|enc|doorst)"
    r"\s*(?:\[\d+\]|\(\d+\))?\s*[:\uff1a]\s*)+",
    re.IGNORECASE,
)

AsyncLookup = Callable[[Sequence[str]], Awaitable[Mapping[str, str]]]
Lookup = Mapping[str, str] | AsyncLookup


def normalize_subject(subject: str | None) -> str:
    """The subject without reply/forward prefixes, whitespace collapsed, case-folded."""
    if not subject:
        return ""
    stripped = _PREFIX.sub("", subject)
    return " ".join(stripped.split()).casefold()


def is_reply_subject(subject: str | None) -> bool:
    """Whether the subject starts with a reply or forward prefix."""
    return bool(subject and _PREFIX.match(subject))


@dataclasses.dataclass(frozen=True, slots=True)
class ThreadRef:
    """What a message says about its place in a thread."""

    message_id: str
    in_reply_to: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    subject: str | None = None
    #: The addresses in From/To/Cc other than ours, case-folded.
    participants: frozenset[str] = frozenset()

    @property
    def ancestors(self) -> tuple[str, ...]:
        """References (root first) then In-Reply-To, without duplicates or the own id."""
        ids = dict.fromkeys((*self.references, *self.in_reply_to))
        ids.pop(self.message_id, None)
        return tuple(ids)

    @property
    def subject_key(self) -> str | None:
        """A key for the subject fallback: normalized subject plus participants."""
        normalized = normalize_subject(self.subject)
        if not normalized or not self.participants:
            return None
        material = normalized + "\x00" + "\x00".join(sorted(self.participants))
        return "subject:" + hashlib.sha256(material.encode("utf-8", "replace")).hexdigest()

    def lookup_keys(self, *, subject_needs_reply_prefix: bool = True) -> tuple[str, ...]:
        """Every key :func:`decide_thread` may need: own id, ancestors, subject key.

        The subject key only where the fallback can apply: no ancestors (an ancestor
        always decides) and, by default, a reply subject.
        """
        keys = (self.message_id, *self.ancestors)
        if len(keys) > 1 or (subject_needs_reply_prefix and not is_reply_subject(self.subject)):
            return keys
        subject_key = self.subject_key
        return (*keys, subject_key) if subject_key else keys


@dataclasses.dataclass(frozen=True, slots=True)
class ThreadDecision:
    """The thread of a message and what the store should remember about it."""

    key: str
    #: ``own-id``, ``ancestor``, ``references``, ``in-reply-to``, ``subject`` or ``new``.
    via: str
    #: Ids not yet known: map each to ``key`` if still absent (never overwrite).
    new_ids: tuple[str, ...] = ()
    #: Map to ``key``, replacing an older value, so the subject leads to the newest thread.
    subject_key: str | None = None


def decide_thread(
    ref: ThreadRef, known: Mapping[str, str], *, subject_needs_reply_prefix: bool = True
) -> ThreadDecision:
    """The thread of ``ref`` given ``known`` (id or subject key -> thread key)."""
    ancestors = ref.ancestors
    new_ids = tuple(i for i in (ref.message_id, *ancestors) if i not in known)
    subject_key = ref.subject_key
    key: str | None = known.get(ref.message_id)
    via = "own-id"
    if key is None:
        via = "ancestor"
        key = next((known[i] for i in ancestors if i in known), None)
    if key is None and ancestors:
        key = ancestors[0]
        via = "references" if ref.references and ancestors[0] in ref.references else "in-reply-to"
    if (
        key is None
        and subject_key is not None
        and subject_key in known
        and (is_reply_subject(ref.subject) or not subject_needs_reply_prefix)
    ):
        key, via = known[subject_key], "subject"
    if key is None:
        key, via = ref.message_id, "new"
    return ThreadDecision(key, via, new_ids, subject_key)


async def assign_thread(
    ref: ThreadRef, lookup: Lookup, *, subject_needs_reply_prefix: bool = True
) -> ThreadDecision:
    """The thread of ``ref``, asking ``lookup`` once for all of :meth:`ThreadRef.lookup_keys`.

    ``lookup`` is a ``Mapping`` (tests, a cache) or an async callable that takes the keys
    and returns the known ones with their thread keys (one ``WHERE key IN (...)`` query).
    """
    keys = ref.lookup_keys(subject_needs_reply_prefix=subject_needs_reply_prefix)
    if isinstance(lookup, Mapping):
        known: Mapping[str, str] = {k: lookup[k] for k in keys if k in lookup}
    else:
        known = await lookup(keys)
    return decide_thread(ref, known, subject_needs_reply_prefix=subject_needs_reply_prefix)


def remember(table: dict[str, str], decision: ThreadDecision) -> None:
    """Apply ``decision`` to an in-memory id table, as the store applies it to its own."""
    for message_id in decision.new_ids:
        table.setdefault(message_id, decision.key)
    if decision.subject_key is not None:
        table[decision.subject_key] = decision.key
