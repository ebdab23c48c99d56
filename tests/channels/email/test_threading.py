"""Thread keys (RFC 5322 3.6.4, JWZ): RELIABILITY 16 and the lookup contract."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from channels.email.parse import parse_message
from channels.email.threading import (
    ThreadDecision,
    ThreadRef,
    assign_thread,
    decide_thread,
    is_reply_subject,
    normalize_subject,
    remember,
)
from tests.channels.email.conftest import OURS, fixture_bytes

ALICE = frozenset({"alice@example.net"})
BOB = frozenset({"bob@example.com"})


class Store:
    """The store's id table, as the lead wires it: async batch lookup, then remember."""

    def __init__(self) -> None:
        self.table: dict[str, str] = {}
        self.queries: list[tuple[str, ...]] = []

    async def lookup(self, keys: Sequence[str]) -> Mapping[str, str]:
        self.queries.append(tuple(keys))
        return {k: self.table[k] for k in keys if k in self.table}

    async def add(self, ref: ThreadRef) -> ThreadDecision:
        decision = await assign_thread(ref, self.lookup)
        remember(self.table, decision)
        return decision


async def test_reply_arriving_before_its_parent_joins_the_same_thread() -> None:
    store = Store()
    root = ThreadRef("<root@x>", subject="Order", participants=ALICE)
    parent = ThreadRef("<p@x>", ("<root@x>",), ("<root@x>",), "Re: Order", ALICE)
    child = ThreadRef("<c@x>", ("<p@x>",), ("<root@x>", "<p@x>"), "Re: Order", ALICE)
    keys = [(await store.add(m)).key for m in (child, parent, root)]
    assert keys == ["<root@x>"] * 3


async def test_reply_with_only_in_reply_to_before_its_parent() -> None:
    store = Store()
    child = ThreadRef("<c@x>", in_reply_to=("<p@x>",), participants=ALICE)
    parent = ThreadRef("<p@x>", references=("<g@x>",), in_reply_to=("<g@x>",))
    grandparent = ThreadRef("<g@x>")
    first = await store.add(child)
    assert first.key == "<p@x>" and first.via == "in-reply-to"
    assert (await store.add(parent)).key == "<p@x>"  # found itself registered by the child
    assert (await store.add(grandparent)).key == "<p@x>"


async def test_same_subject_with_other_participants_stays_apart() -> None:
    store = Store()
    a = await store.add(ThreadRef("<a1@x>", subject="Invoice", participants=ALICE))
    b = await store.add(ThreadRef("<b1@x>", subject="Invoice", participants=BOB))
    # Replies whose client dropped In-Reply-To/References: the subject decides.
    a2 = await store.add(ThreadRef("<a2@x>", subject="Re: Invoice", participants=ALICE))
    b2 = await store.add(ThreadRef("<b2@x>", subject="AW: invoice", participants=BOB))
    assert a.key != b.key
    assert (a2.key, a2.via) == (a.key, "subject")
    assert (b2.key, b2.via) == (b.key, "subject")


async def test_same_subject_and_people_without_reply_prefix_is_a_new_thread() -> None:
    store = Store()
    first = await store.add(ThreadRef("<q1@x>", subject="Question", participants=ALICE))
    second = await store.add(ThreadRef("<q2@x>", subject="Question", participants=ALICE))
    assert first.key != second.key
    # A headerless "Re:" follows the newest thread of that subject.
    reply = await store.add(ThreadRef("<q3@x>", subject="Re: Question", participants=ALICE))
    assert reply.key == second.key


def test_subject_fallback_can_be_widened() -> None:
    table: dict[str, str] = {}
    remember(table, decide_thread(ThreadRef("<1@x>", subject="Hello", participants=ALICE), {}))
    again = ThreadRef("<2@x>", subject="hello", participants=ALICE)
    assert decide_thread(again, table).key == "<2@x>"
    assert decide_thread(again, table, subject_needs_reply_prefix=False).key == "<1@x>"


async def test_self_reference_makes_no_loop() -> None:
    store = Store()
    selfish = ThreadRef("<s@x>", ("<s@x>",), ("<s@x>", "<s@x>"), "Re: me", ALICE)
    assert selfish.ancestors == ()
    decision = await store.add(selfish)
    assert decision.key == "<s@x>" and decision.via == "new"
    # A cycle between two messages is no loop either: no chain is ever followed.
    one = ThreadRef("<1@x>", references=("<2@x>",))
    two = ThreadRef("<2@x>", references=("<1@x>",))
    assert (await store.add(one)).key == (await store.add(two)).key == "<2@x>"


async def test_message_ids_compare_case_sensitively() -> None:
    store = Store()
    await store.add(ThreadRef("<ABC@x>"))
    other = await store.add(ThreadRef("<z@x>", in_reply_to=("<abc@x>",)))
    assert other.key == "<abc@x>"


async def test_lookup_is_one_batch_and_a_mapping_works_too() -> None:
    store = Store()
    ref = ThreadRef("<c@x>", ("<p@x>",), ("<r@x>", "<p@x>"), "Re: x", ALICE)
    await store.add(ref)
    assert len(store.queries) == 1
    # With ancestors the subject cannot decide: it is not asked about.
    assert store.queries[0] == ("<c@x>", "<r@x>", "<p@x>")
    assert (await assign_thread(ref, {"<p@x>": "<elsewhere@x>"})).key == "<elsewhere@x>"
    # Without them it is, for a reply subject only (unless the prefix is not required).
    lone = ThreadRef("<d@x>", subject="Re: x", participants=ALICE)
    assert lone.lookup_keys()[1].startswith("subject:")
    plain = ThreadRef("<e@x>", subject="x", participants=ALICE)
    assert plain.lookup_keys() == ("<e@x>",)
    assert plain.lookup_keys(subject_needs_reply_prefix=False)[1] == plain.subject_key


def test_known_ids_are_never_reassigned() -> None:
    table = {"<p@x>": "<t1@x>"}
    decision = decide_thread(ThreadRef("<c@x>", ("<p@x>",), ("<p@x>",)), table)
    assert decision.key == "<t1@x>"
    assert decision.new_ids == ("<c@x>",)


@pytest.mark.parametrize(
    ("subject", "normalized", "reply"),
    [
        ("Re: Order", "order", True),
        ("RE: re: Fwd: Order", "order", True),
        ("AW: WG: Bestellung  42", "bestellung 42", True),
        ("Re[2]: Order", "order", True),
        ("SV: Ordre", "ordre", True),
        ("Order Re: later", "order re: later", False),
        ("Reminder: pay", "reminder: pay", False),
        ("", "", False),
    ],
)
def test_normalize_subject(subject: str, normalized: str, reply: bool) -> None:
    assert normalize_subject(subject) == normalized
    assert is_reply_subject(subject) is reply


async def test_parsed_corpus_thread_together() -> None:
    """plain.eml and its answer reply.eml (References root = plain) share a thread."""
    store = Store()
    reply = parse_message(fixture_bytes("reply.eml"), our_addresses=OURS)
    plain = parse_message(fixture_bytes("plain.eml"), our_addresses=OURS)
    assert reply.thread.participants == frozenset({"jane.doe@example.org"})
    first = await store.add(reply.thread)  # the reply first
    second = await store.add(plain.thread)
    assert first.key == second.key == plain.message_id == reply.event.thread_key
