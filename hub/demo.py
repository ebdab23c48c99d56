"""The demo: a believable multi-channel history in a fresh embedded database.

Made from a fixed random seed, so every demo looks the same: agents, customers with
phones and emails, SMS conversations with delivery states, answered and missed calls,
email threads with an attachment and a bounce, notes and documents. Every event goes
through ``timeline.ingest`` as a channel adapter's would.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass
from datetime import timedelta

from hub.auth import add_agent
from hub.voice_outbound import set_phone
from timeline import customers as customer_ops
from timeline import mailstore
from timeline.db import Database
from timeline.events import (
    Attachment,
    Channel,
    Direction,
    Event,
    Identity,
    IdentityKind,
    Kind,
    utcnow,
)
from timeline.files import FileStore
from timeline.ingest import ingest_batch

OUR_NUMBER = "+14155550199"
OUR_EMAIL = "support@commhub.example"
#: Browser clients an incoming call rings (TWILIO_VOICE_CLIENTS of the demo): the agents'.
VOICE_CLIENTS = ("agent", "supervisor")
#: The demo agent's own phone, rung first by click-to-call (the sandbox answers it).
AGENT_PHONE = "+14155550177"

_FIRST = [
    "Ada",
    "Boris",
    "Chloé",
    "Dmitri",
    "Elena",
    "Farah",
    "Georg",
    "Hana",
    "Ivan",
    "Jun",
    "Kofi",
    "Lena",
    "Mateo",
    "Nina",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Tanya",
]
_LAST = [
    "Lovelace",
    "Petrov",
    "Martin",
    "Ivanov",
    "Sokolova",
    "Haddad",
    "Weber",
    "Sato",
    "Kuznetsov",
    "Chen",
    "Mensah",
    "Fischer",
    "García",
    "Novak",
    "Khan",
    "Patel",
]
_AREAS = ["415", "212", "312", "617", "206"]

_SMS_IN = [
    "Hi, can we move my appointment to Thursday?",
    "Is my order ready for pickup?",
    "Thanks, see you tomorrow!",
    "What time do you open on Saturday?",
    "The invoice has the wrong address, can you fix it?",
]
_SMS_OUT = [
    "Of course. Thursday 10:00 works, you're booked.",
    "Yes, it's ready. We're open until 18:00.",
    "Reminder: your appointment is tomorrow at 9:30. Reply STOP to opt out.",
    "We've corrected the invoice and emailed it to you.",
]
_SUBJECTS = ["Contract renewal", "Question about my invoice", "Meeting notes", "Quote request"]


@dataclass(frozen=True)
class DemoLogin:
    """How to log in to the demo."""

    email: str
    password: str
    token: str


async def seed(db: Database, files: FileStore, *, customers: int = 40) -> DemoLogin:
    """Fill an empty, migrated database with the demo's agents, customers and history."""
    rng = random.Random(20261123)
    password = secrets.token_urlsafe(9)  # printed by `demo`; a fresh one every time
    async with db.write() as conn:
        agent_id, token = await add_agent(
            conn,
            email="agent@demo.example",
            role="admin",
            name="Demo Agent",
            team="support",
            password=password,
        )
        await set_phone(conn, agent_id, AGENT_PHONE, "US")
        await add_agent(
            conn,
            email="supervisor@demo.example",
            role="supervisor",
            name="Sam Supervisor",
            team="support",
            password=password,
        )
        batch: list[Event] = []
        for n in range(customers):
            name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
            phone = f"+1{rng.choice(_AREAS)}5550{100 + n:03d}"
            email = f"{name.split()[0].lower()}.{n}@example.com"
            cid = await customer_ops.create(
                conn,
                name=name,
                timezone=rng.choice(["America/New_York", "America/Chicago", "Europe/Berlin", None]),
                attributes={
                    "plan": rng.choice(["basic", "pro", "enterprise"]),
                    "customer_since": 2015 + rng.randrange(11),
                },
                ids=[Identity(IdentityKind.PHONE, phone), Identity(IdentityKind.EMAIL, email)],
            )
            batch += _history(rng, n, cid, phone, email)
        await ingest_batch(conn, batch, region="US", files=files)
        for event in batch:
            if event.kind == Kind.SYSTEM and event.status == "bounced" and event.recipient:
                await mailstore.record_bounce(
                    conn,
                    event.recipient.value.lower(),
                    hard=True,
                    status="5.1.1",
                    event_id=None,
                    at=event.occurred_at,
                )
    return DemoLogin("agent@demo.example", password, token)


def _demo_dsn(n: int, email: str) -> dict[str, object]:
    """A hard bounce as ``channels.email.dsn.DeliveryReport.as_data`` gives it."""
    return {
        "original_message_id": f"<demo-{n}-2@commhub.example>",
        "reporting_mta": "mx.commhub.example",
        "status": "5.1.1",
        "hard": True,
        "recipients": [
            {
                "address": email,
                "action": "failed",
                "status": "5.1.1",
                "hard": True,
                "diagnostic": "smtp; 550 5.1.1 user unknown",
            }
        ],
    }


def _history(rng: random.Random, n: int, cid: str, phone: str, email: str) -> list[Event]:
    start = utcnow() - timedelta(days=rng.randrange(3, 60), minutes=rng.randrange(600))
    t = start
    out: list[Event] = []
    me = Identity(IdentityKind.PHONE, OUR_NUMBER)
    them = Identity(IdentityKind.PHONE, phone)
    mail_us = Identity(IdentityKind.EMAIL, OUR_EMAIL)
    mail_them = Identity(IdentityKind.EMAIL, email)
    for i in range(rng.randrange(2, 7)):
        t += timedelta(hours=rng.randrange(1, 40), minutes=rng.randrange(60))
        out.append(
            Event(
                Channel.SMS,
                Kind.MESSAGE,
                Direction.INBOUND,
                t,
                external_id=f"SMdemo{n:03d}in{i}",
                status="received",
                text=rng.choice(_SMS_IN),
                sender=them,
                recipient=me,
                customer_id=cid,
            )
        )
        t += timedelta(minutes=rng.randrange(2, 30))
        status = "undelivered" if rng.random() < 0.08 else "delivered"
        data = {"error_code": 30003} if status == "undelivered" else {}
        out.append(
            Event(
                Channel.SMS,
                Kind.MESSAGE,
                Direction.OUTBOUND,
                t,
                external_id=f"SMdemo{n:03d}out{i}",
                status=status,
                text=rng.choice(_SMS_OUT),
                sender=me,
                recipient=them,
                customer_id=cid,
                data=data,
            )
        )
    for i in range(rng.randrange(0, 4)):
        t += timedelta(hours=rng.randrange(2, 50))
        missed = rng.random() < 0.3
        out.append(
            Event(
                Channel.VOICE,
                Kind.CALL,
                Direction.INBOUND,
                t,
                external_id=f"CAdemo{n:03d}c{i}",
                status="no-answer" if missed else "completed",
                sender=them,
                recipient=me,
                customer_id=cid,
                data={
                    "duration": 0 if missed else rng.randrange(30, 900),
                    "missed": missed,
                    "answered": not missed,
                    **({} if missed else {"answered_by": f"client:{rng.choice(VOICE_CLIENTS)}"}),
                },
            )
        )
    subject = rng.choice(_SUBJECTS)
    thread = f"<demo-{n}-thread@commhub.example>"
    t += timedelta(hours=rng.randrange(1, 30))
    attachments: tuple[Attachment, ...] = ()
    if n % 5 == 0:
        attachments = (
            Attachment(
                "quote.txt",
                "text/plain",
                content=f"Quote #{1000 + n}: 3 x service, total 450 EUR\n".encode(),
            ),
        )
    out.append(
        Event(
            Channel.EMAIL,
            Kind.MESSAGE,
            Direction.INBOUND,
            t,
            external_id=f"<demo-{n}-1@example.com>",
            status="received",
            subject=subject,
            text=f"Hello,\n\nI have a question: {subject.lower()}.\n",
            thread_key=thread,
            sender=mail_them,
            recipient=mail_us,
            attachments=attachments,
            customer_id=cid,
        )
    )
    t += timedelta(hours=rng.randrange(1, 8))
    bounced = n % 13 == 7
    out.append(
        Event(
            Channel.EMAIL,
            Kind.MESSAGE,
            Direction.OUTBOUND,
            t,
            external_id=f"<demo-{n}-2@commhub.example>",
            status="bounced" if bounced else "sent",
            subject=f"Re: {subject}",
            text="Thanks for writing, we'll get back to you today.",
            thread_key=thread,
            sender=mail_us,
            recipient=mail_them,
            customer_id=cid,
            data={"dsn": _demo_dsn(n, email)} if bounced else {},
        )
    )
    if bounced:
        # As ingestion stores a delivery report (RFC 3464): a system event in the
        # thread, never a customer's reply; the address is then refused (see seed).
        out.append(
            Event(
                Channel.EMAIL,
                Kind.SYSTEM,
                Direction.INTERNAL,
                t + timedelta(minutes=2),
                external_id=f"<demo-{n}-dsn@mx.commhub.example>",
                status="bounced",
                subject="Undelivered Mail Returned to Sender",
                text=f"<{email}>: host mx.example.com said: 550 5.1.1 user unknown",
                thread_key=thread,
                recipient=mail_them,
                customer_id=cid,
                data={
                    "dsn": _demo_dsn(n, email),
                    "from": ["mailer-daemon@mx.commhub.example"],
                    "auto_submitted": True,
                    "auto_submitted_reason": "delivery report",
                },
            )
        )
    if rng.random() < 0.5:
        t += timedelta(hours=2)
        out.append(
            Event(
                Channel.NOTE,
                Kind.NOTE,
                Direction.INTERNAL,
                t,
                text="Prefers SMS over calls; call after 14:00.",
                customer_id=cid,
            )
        )
    return out
