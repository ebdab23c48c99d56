"""Realistic, reproducible rows for the benchmarks: customers, identities, events.

Event counts per customer follow a Zipf-like law (weight ``rank ** -0.75``, at least one
event each), so with 1M events over 100k customers the median customer has about five
events, a couple of thousand have 50 or more and the busiest tens of thousands. Rows
carry what the channel adapters store: SMS and call sids, Message-IDs and threads,
statuses from the rank tables of ``timeline.status``, plain text (and HTML for some
email), channel data and attachment summaries. Everything comes from one seeded
``random.Random``, so two runs build the same shape (ids and timestamps differ).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from timeline.events import Channel, Direction, Event, Identity, IdentityKind, Kind
from timeline.ids import new_id

ZIPF_EXPONENT = 0.75

#: Area codes of the built customers' phones; new senders in the ingest step use others.
KNOWN_AREAS = (212, 213, 312, 415, 617, 206, 303, 512, 404, 305, 702, 718, 646, 408, 510)
NEW_AREAS = (619, 858, 503, 602, 214, 615, 704, 919, 801, 916)
OUR_NUMBER = "+14155550123"
OUR_ADDRESS = "support@commhub.example"

FIRST = (
    "Ada Ben Carla Dmitri Elena Farid Grace Hiro Ines Jonas Keiko Liam Maya Nils Olga Pedro "
    "Quinn Rosa Samir Tess Umar Vera Wei Ximena Yusuf Zoe Amara Bruno Chloe Diego"
).split()
LAST = (
    "Andersen Baptiste Chen Dubois Eriksen Fischer Garcia Hansen Ivanova Jensen Kowalski "
    "Larsen Moreau Nakamura Okafor Petrov Quispe Rossi Schmidt Tanaka Usman Volkova Weber "
    "Xu Yilmaz Zielinski"
).split()
DOMAINS = ("gmail.com", "outlook.com", "yahoo.com", "proton.me", "icloud.com", "example.org")
WORDS = (
    "the appointment tomorrow at please confirm your order has shipped thanks for calling "
    "we are sorry about delay invoice attached can you reschedule my booking next week "
    "is the clinic open on saturday i would like to cancel reminder visit payment received "
    "hello hi yes no ok great perfect see you then could we move it to friday morning "
    "afternoon evening address parking directions refund delivery tracking number "
    "question about bill account password reset dentist haircut table for two tonight "
    "running late ten minutes sorry traffic arrived front desk call me back when possible"
).split()
SUBJECTS = (
    "Your appointment on {d}",
    "Re: Invoice {n}",
    "Question about my order {n}",
    "Re: Re: Rescheduling",
    "Welcome to the clinic",
    "Your receipt {n}",
    "Fwd: directions",
    "Survey: how did we do?",
)
SMS_OUT_STATUSES = (("delivered", 85), ("sent", 6), ("undelivered", 5), ("failed", 3), ("read", 1))
EMAIL_OUT_STATUSES = (("delivered", 88), ("sent", 7), ("bounced", 4), ("failed", 1))
CALL_STATUSES = (("completed", 75), ("no-answer", 15), ("busy", 6), ("failed", 4))
MEETING_STATUSES = (("confirmed", 80), ("tentative", 12), ("cancelled", 8))
#: (channel, weight) of built events; email only for customers with an address.
CHANNEL_MIX = (
    (Channel.SMS, 45),
    (Channel.EMAIL, 30),
    (Channel.VOICE, 15),
    (Channel.CALENDAR, 5),
    (Channel.NOTE, 5),
)


def _weighted(pairs: tuple[tuple[Any, int], ...]) -> tuple[Any, ...]:
    """Each value repeated by its weight: a uniform pick from it is a weighted pick."""
    return tuple(value for value, weight in pairs for _ in range(weight))


@dataclasses.dataclass(slots=True)
class BuiltCustomer:
    """What the benchmark keeps of a built customer."""

    id: str
    phone: str
    email: str | None
    events: int


def event_counts(events: int, customers: int) -> list[int]:
    """How many events each customer gets (Zipf-like, at least one each), summing to events."""
    if events < customers:
        raise ValueError("need at least one event per customer")
    weights = [(rank + 1) ** -ZIPF_EXPONENT for rank in range(customers)]
    total = sum(weights)
    rest = events - customers
    counts = [1 + int(rest * w / total) for w in weights]
    short = events - sum(counts)
    for i in range(short):
        counts[i % customers] += 1
    return counts


class Generator:
    """Rows for the events, customers and identities tables, from one seed."""

    def __init__(self, seed: int = 20261123) -> None:
        self.rng = random.Random(seed)
        self.now = datetime.now(UTC).replace(microsecond=0)
        self._phones: set[str] = set()
        self._sms_out = _weighted(SMS_OUT_STATUSES)
        self._email_out = _weighted(EMAIL_OUT_STATUSES)
        self._calls = _weighted(CALL_STATUSES)
        self._meetings = _weighted(MEETING_STATUSES)
        self._channels = _weighted(CHANNEL_MIX)
        # Texts come from pools made once: a million rows need not be a million draws.
        self._pools: dict[tuple[int, int], list[str]] = {}

    def _pick(self, table: tuple[Any, ...]) -> Any:
        return table[int(self.rng.random() * len(table))]

    def _below(self, n: int) -> int:
        """A number in ``range(n)`` (cheaper than ``randrange`` per row; n is small)."""
        return int(self.rng.random() * n)

    def row_id(self) -> str:
        """An id laid out like ``timeline.ids.new_id`` (UUIDv7), from this generator's rng.

        ``new_id`` reads ``os.urandom`` per call, a system call per row when building a
        million; ids here only need to be unique and time-ordered the same way.
        """
        ms = time.time_ns() // 1_000_000
        value = (ms << 80) | self.rng.getrandbits(80)
        value = (value & ~(0xF << 76)) | (0x7 << 76)
        value = (value & ~(0x3 << 62)) | (0x2 << 62)
        return f"{value:032x}"

    def phone(self, areas: tuple[int, ...] = KNOWN_AREAS) -> str:
        """A valid, unused US number in E.164 form."""
        while True:
            number = (
                f"+1{self.rng.choice(areas)}{self.rng.randint(200, 999)}"
                f"{self.rng.randint(0, 9999):04d}"
            )
            if number not in self._phones:
                self._phones.add(number)
                return number

    def sentence(self, low: int, high: int) -> str:
        """Plain text of ``low`` to ``high`` words (from a pool of 2,000 such texts)."""
        pool = self._pools.get((low, high))
        if pool is None:
            pool = self._pools[low, high] = [self._compose(low, high) for _ in range(2000)]
        return pool[int(self.rng.random() * len(pool))]

    def _compose(self, low: int, high: int) -> str:
        words = self.rng.choices(WORDS, k=self.rng.randint(low, high))
        return " ".join(words).capitalize() + "."

    def customers(
        self, count: int, counts: list[int]
    ) -> tuple[list[BuiltCustomer], list[dict[str, Any]], list[dict[str, Any]]]:
        """Customers (busy ones spread among the rest), their rows and identity rows."""
        order = list(counts)
        self.rng.shuffle(order)
        built: list[BuiltCustomer] = []
        customer_rows: list[dict[str, Any]] = []
        identity_rows: list[dict[str, Any]] = []
        for i in range(count):
            cid = new_id()
            first, last = self.rng.choice(FIRST), self.rng.choice(LAST)
            created = self.now - timedelta(days=self.rng.randint(30, 1500))
            phone = self.phone()
            email = None
            if self.rng.random() < 0.6:
                email = f"{first.lower()}.{last.lower()}{i}@{self.rng.choice(DOMAINS)}"
            built.append(BuiltCustomer(cid, phone, email, order[i]))
            customer_rows.append(
                {
                    "id": cid,
                    "name": f"{first} {last}" if self.rng.random() < 0.7 else None,
                    "timezone": self.rng.choice(("America/New_York", "Europe/Berlin", None)),
                    "attributes": {"plan": self.rng.choice(("basic", "plus", "pro"))},
                    "created_at": created,
                    "updated_at": created,
                    "merged_into": None,
                    "erased_at": None,
                }
            )
            for kind, value in ((IdentityKind.PHONE, phone), (IdentityKind.EMAIL, email)):
                if value is not None:
                    identity_rows.append(
                        {
                            "id": new_id(),
                            "customer_id": cid,
                            "kind": kind.value,
                            "value": value,
                            "created_at": created,
                        }
                    )
        return built, customer_rows, identity_rows

    def timeline_order(self, built: list[BuiltCustomer], days: int = 1095) -> list[tuple[int, int]]:
        """(seconds ago, customer index) of every event, oldest first (arrival order)."""
        span = days * 86400
        slots = [
            (self._below(span), index)
            for index, customer in enumerate(built)
            for _ in range(customer.events)
        ]
        slots.sort(reverse=True)
        return slots

    def event_row(self, customer: BuiltCustomer, seconds_ago: int) -> dict[str, Any]:
        """One realistic events row for this customer."""
        rng = self.rng
        when = self.now - timedelta(seconds=seconds_ago, microseconds=self._below(1_000_000))
        channel: Channel = self._pick(self._channels)
        if channel is Channel.EMAIL and customer.email is None:
            channel = Channel.SMS
        inbound = rng.random() < 0.45
        direction = Direction.INBOUND if inbound else Direction.OUTBOUND
        subject = html = thread_key = None
        sender: str | None
        recipient: str | None
        attachments: list[dict[str, Any]] = []
        if channel is Channel.SMS:
            kind = Kind.MESSAGE
            external_id: str | None = "SM" + self.row_id()
            status = "received" if inbound else self._pick(self._sms_out)
            body = self.sentence(3, 30)
            text: str | None = body
            ours, theirs = OUR_NUMBER, customer.phone
            thread_key = f"sms:{customer.phone}"
            data: dict[str, Any] = {"num_segments": 1 + len(body) // 160, "price": "-0.0079"}
        elif channel is Channel.EMAIL:
            kind = Kind.MESSAGE
            external_id = f"<{self.row_id()}@mail.commhub.example>"
            status = "received" if inbound else self._pick(self._email_out)
            subject = rng.choice(SUBJECTS).format(
                d=when.date().isoformat(), n=1 + self._below(9999)
            )
            text = "\n\n".join(self.sentence(8, 40) for _ in range(1 + self._below(4)))
            if rng.random() < 0.5:
                paragraphs = "".join(f"<p>{p}</p>" for p in text.split("\n\n"))
                html = f"<html><body>{paragraphs}<p>--<br>Sent from my phone</p></body></html>"
            ours, theirs = OUR_ADDRESS, customer.email or ""
            thread_key = f"<thread-{customer.id[-12:]}-{self._below(21)}@mail.commhub.example>"
            data = {"message_id": external_id, "spam_score": round(rng.random(), 2)}
            if rng.random() < 0.1:
                attachments = [
                    {
                        "id": self.row_id(),
                        "filename": "invoice.pdf",
                        "content_type": "application/pdf",
                        "size": 20_000 + self._below(380_000),
                    }
                ]
        elif channel is Channel.VOICE:
            kind = Kind.CALL
            external_id = "CA" + self.row_id()
            status = self._pick(self._calls)
            text = None
            ours, theirs = OUR_NUMBER, customer.phone
            data = {"duration": 5 + self._below(1796) if status == "completed" else 0}
            if status == "completed" and rng.random() < 0.3:
                data["recording"] = f"RE{self.row_id()}"
        elif channel is Channel.CALENDAR:
            kind = Kind.MEETING
            direction = Direction.OUTBOUND
            external_id = f"{self.row_id()}@calendar.commhub.example"
            status = self._pick(self._meetings)
            subject = "Appointment"
            text = self.sentence(4, 12)
            ours, theirs = OUR_ADDRESS, customer.email or customer.phone
            data = {"starts_at": when.isoformat(), "minutes": rng.choice((15, 30, 45, 60))}
        else:
            kind = Kind.NOTE
            direction = Direction.INTERNAL
            external_id = None
            status = None
            text = self.sentence(5, 60)
            ours, theirs = "", ""
            data = {"author": "agent"}
        if direction is Direction.INBOUND:
            sender, recipient = theirs, ours
        elif direction is Direction.OUTBOUND:
            sender, recipient = ours, theirs
        else:
            sender = recipient = None
        return {
            "id": self.row_id(),
            "customer_id": customer.id,
            "channel": channel.value,
            "kind": kind.value,
            "direction": direction.value,
            "external_id": external_id,
            "occurred_at": when,
            "status": status,
            "subject": subject,
            "text": text,
            "html": html,
            "thread_key": thread_key,
            "sender": sender,
            "recipient": recipient,
            "attachments": attachments,
            "data": data,
            "created_at": when,
            "updated_at": when,
        }

    def ingest_batches(
        self,
        known: list[BuiltCustomer],
        batches: int,
        size: int,
        known_share: float = 0.5,
        email_share: float = 0.4,
    ) -> Iterator[list[Event]]:
        """Batches of normalized events as adapters hand them over (SMS and email).

        About ``known_share`` come from existing customers' phones and addresses (emails
        with the domain upper-cased, as some mail clients write it); the rest from new
        senders, each new sender writing once or twice.
        """
        rng = self.rng
        serial = 0
        for _ in range(batches):
            batch: list[Event] = []
            fresh: list[Identity] = []
            while len(batch) < size:
                serial += 1
                email = rng.random() < email_share
                if rng.random() < known_share:
                    customer = rng.choice(known)
                    if email and customer.email:
                        local, _, domain = customer.email.partition("@")
                        who = Identity(IdentityKind.EMAIL, f"{local}@{domain.upper()}")
                    else:
                        email = False
                        who = Identity(IdentityKind.PHONE, customer.phone)
                elif fresh and rng.random() < 0.3:
                    who = rng.choice(fresh)
                    email = who.kind is IdentityKind.EMAIL
                else:
                    if email:
                        who = Identity(
                            IdentityKind.EMAIL, f"new.sender{serial}@{rng.choice(DOMAINS)}"
                        )
                    else:
                        who = Identity(IdentityKind.PHONE, self.phone(NEW_AREAS))
                    fresh.append(who)
                batch.append(self._ingest_event(who, email))
            yield batch

    def _ingest_event(self, who: Identity, email: bool) -> Event:
        rng = self.rng
        inbound = rng.random() < 0.7
        when = datetime.now(UTC)
        if email:
            ours = Identity(IdentityKind.EMAIL, OUR_ADDRESS)
            mid = f"<{new_id()}@mail.example.net>"
            text = "\n\n".join(self.sentence(8, 40) for _ in range(rng.randint(1, 3)))
            return Event(
                channel=Channel.EMAIL,
                kind=Kind.MESSAGE,
                direction=Direction.INBOUND if inbound else Direction.OUTBOUND,
                occurred_at=when,
                external_id=mid,
                status="received" if inbound else "sent",
                subject=rng.choice(SUBJECTS).format(d=when.date(), n=rng.randint(1, 9999)),
                text=text,
                html=f"<html><body><p>{text}</p></body></html>" if rng.random() < 0.5 else None,
                thread_key=mid,
                sender=who if inbound else ours,
                recipient=ours if inbound else who,
                data={"message_id": mid},
            )
        ours = Identity(IdentityKind.PHONE, OUR_NUMBER)
        return Event(
            channel=Channel.SMS,
            kind=Kind.MESSAGE,
            direction=Direction.INBOUND if inbound else Direction.OUTBOUND,
            occurred_at=when,
            external_id="SM" + new_id(),
            status="received" if inbound else "queued",
            text=self.sentence(3, 30),
            thread_key=None,
            sender=who if inbound else ours,
            recipient=ours if inbound else who,
            data={"num_segments": 1},
        )
