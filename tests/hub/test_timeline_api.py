"""The timeline over HTTP: notes, keyset pages with cursor, channel filter and words;
merging two customers and undoing it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.hub.conftest import Hub, assert_error
from timeline.events import Channel, Direction, Event, Identity, IdentityKind, Kind
from timeline.ingest import ingest

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
OUR_NUMBER = Identity(IdentityKind.PHONE, "+14155559999")
OUR_ADDRESS = Identity(IdentityKind.EMAIL, "help@hub.example")


def sms(phone: str, n: int, text: str) -> Event:
    return Event(
        channel=Channel.SMS,
        kind=Kind.MESSAGE,
        direction=Direction.INBOUND,
        occurred_at=T0 + timedelta(minutes=n),
        external_id=f"SM{phone[-4:]}{n:028d}",
        status="received",
        text=text,
        sender=Identity(IdentityKind.PHONE, phone),
        recipient=OUR_NUMBER,
    )


def email(address: str, n: int, subject: str, text: str) -> Event:
    return Event(
        channel=Channel.EMAIL,
        kind=Kind.MESSAGE,
        direction=Direction.INBOUND,
        occurred_at=T0 + timedelta(minutes=n),
        external_id=f"<m{n}.{address}>",
        status="received",
        subject=subject,
        text=text,
        sender=Identity(IdentityKind.EMAIL, address),
        recipient=OUR_ADDRESS,
    )


async def pages(hub: Hub, customer_id: str, **params: str) -> list[list[dict[str, Any]]]:
    """Every page of a timeline query, following ``next``."""
    result: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await hub.api.get(f"/api/v1/customers/{customer_id}/timeline", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        result.append(body["items"])
        cursor = body["next"]
        if cursor is None:
            return result
        assert len(result) < 50, "the cursor does not advance"


async def test_a_note_is_on_the_timeline(hub: Hub) -> None:
    ann = await hub.create_customer(name="Ann")
    note = await hub.note(ann["id"], "Called back, all good")
    assert note["customer_id"] == ann["id"]
    assert (note["channel"], note["kind"], note["direction"]) == ("note", "note", "internal")
    assert note["text"] == "Called back, all good"
    assert note["occurred_at"].endswith("Z")
    assert note["attachments"] == []
    response = await hub.api.get(f"/api/v1/customers/{ann['id']}/timeline")
    assert response.json() == {"items": [note], "next": None}
    customer = (await hub.api.get(f"/api/v1/customers/{ann['id']}")).json()
    assert customer["counts"] == {"note": 1, "total": 1}
    # An empty note is refused, naming the field.
    response = await hub.api.post(f"/api/v1/customers/{ann['id']}/notes", json={"text": ""})
    assert assert_error(response, 422, "invalid_field")["field"] == "text"


async def test_timeline_pages_with_cursor_channel_and_words(hub: Hub) -> None:
    ann = await hub.create_customer(name="Ann", phones=["+14155550100"], emails=["ann@x.example"])
    events = [sms("+14155550100", n, f"sms number {n} about parcels") for n in range(0, 14, 2)]
    events += [
        email("ann@x.example", n, f"Subject {n}", f"mail {n} about invoices")
        for n in range(1, 14, 2)
    ]
    result = await ingest(hub.db, events, region="US")
    assert result.count("created") == 14
    notes = [await hub.note(ann["id"], f"note {i} about parcels") for i in range(3)]

    everything = await pages(hub, ann["id"], limit="4")
    assert [len(p) for p in everything] == [4, 4, 4, 4, 1]
    flat = [e for page in everything for e in page]
    assert len({e["id"] for e in flat}) == 17
    # Newest first: the notes (now) before the 2024 messages, the messages by time.
    assert [e["id"] for e in flat[:3]] == [n["id"] for n in reversed(notes)]
    stamps = [e["occurred_at"] for e in flat[3:]]
    assert stamps == sorted(stamps, reverse=True)
    assert flat[3]["occurred_at"] == "2024-03-01T12:13:00Z"

    sms_only = [e for page in await pages(hub, ann["id"], limit="3", channel="sms") for e in page]
    assert len(sms_only) == 7 and {e["channel"] for e in sms_only} == {"sms"}
    assert sms_only[0]["from"] == "+14155550100" and sms_only[0]["to"] == "+14155559999"
    both = [e for page in await pages(hub, ann["id"], limit="5", channel="sms,email") for e in page]
    assert len(both) == 14 and {e["channel"] for e in both} == {"sms", "email"}

    parcels = [e for page in await pages(hub, ann["id"], limit="2", q="parcels") for e in page]
    assert {e["channel"] for e in parcels} == {"sms", "note"} and len(parcels) == 10
    in_sms = [
        e for page in await pages(hub, ann["id"], channel="sms", q="parcels number") for e in page
    ]
    assert len(in_sms) == 7
    by_subject = await pages(hub, ann["id"], q="Subject 5")
    assert [e["subject"] for e in by_subject[0]] == ["Subject 5"]
    assert await pages(hub, ann["id"], q="zebra") == [[]]

    response = await hub.api.get(
        f"/api/v1/customers/{ann['id']}/timeline", params={"channel": "sms,pigeon"}
    )
    assert assert_error(response, 422, "invalid_field")["field"] == "channel"
    response = await hub.api.get(f"/api/v1/customers/{ann['id']}/timeline", params={"limit": "0"})
    assert assert_error(response, 422, "invalid_field")["field"] == "limit"


async def test_an_event_arriving_while_paging_neither_shifts_nor_repeats(hub: Hub) -> None:
    ann = await hub.create_customer(name="Ann", phones=["+14155550100"])
    await ingest(hub.db, [sms("+14155550100", n, f"m{n}") for n in range(6)], region="US")
    url = f"/api/v1/customers/{ann['id']}/timeline"
    first = (await hub.api.get(url, params={"limit": "3"})).json()
    await hub.note(ann["id"], "arrived in between")
    second = (await hub.api.get(url, params={"limit": "3", "cursor": first["next"]})).json()
    assert [e["text"] for e in first["items"] + second["items"]] == [
        f"m{n}" for n in range(5, -1, -1)
    ]
    assert second["next"] is None


async def snapshot(hub: Hub, *ids: str) -> dict[str, Any]:
    """GET of each customer and every page of its timeline."""
    shot: dict[str, Any] = {}
    for cid in ids:
        customer = await hub.api.get(f"/api/v1/customers/{cid}")
        assert customer.status_code == 200, customer.text
        shot[cid] = {
            "customer": customer.json(),
            "timeline": await pages(hub, cid, limit="3"),
        }
    return shot


async def test_merge_then_undo_restores_both_customers(hub: Hub) -> None:
    ann = await hub.create_customer(
        name="Ann", phones=["+14155550100"], attributes={"tier": "gold", "shared": "ann"}
    )
    other = await hub.create_customer(
        emails=["ann.lee@x.example"],
        timezone="Europe/Oslo",
        attributes={"shared": "other", "source": "email"},
    )
    await ingest(
        hub.db,
        [sms("+14155550100", n, f"sms {n}") for n in range(3)]
        + [email("ann.lee@x.example", n, f"Re: {n}", f"mail {n}") for n in range(3, 7)],
        region="US",
    )
    await hub.note(ann["id"], "note on ann")
    await hub.note(other["id"], "note on the other")
    before = await snapshot(hub, ann["id"], other["id"])

    response = await hub.api.post(
        f"/api/v1/customers/{ann['id']}/merge", json={"other_id": other["id"]}
    )
    assert response.status_code == 200, response.text
    merged = response.json()
    merge = merged["merge"]
    assert (merge["target_id"], merge["other_id"]) == (ann["id"], other["id"])
    assert merge["undone_at"] is None
    assert merge["moved"] == {"identities": 1, "events": 5, "documents": 0}
    customer = merged["customer"]
    assert customer["emails"] == ["ann.lee@x.example"]
    assert customer["phones"] == ["+14155550100"]
    assert customer["timezone"] == "Europe/Oslo"
    assert customer["attributes"] == {"tier": "gold", "shared": "ann", "source": "email"}
    assert customer["counts"]["total"] == 9
    timeline = [e for page in await pages(hub, ann["id"]) for e in page]
    assert len(timeline) == 9 and {e["customer_id"] for e in timeline} == {ann["id"]}
    gone = (await hub.api.get(f"/api/v1/customers/{other['id']}")).json()
    assert gone["merged_into"] == ann["id"]
    # The merged-away customer takes no new notes and no second merge.
    response = await hub.api.post(f"/api/v1/customers/{other['id']}/notes", json={"text": "x"})
    assert_error(response, 409, "conflict")
    response = await hub.api.post(
        f"/api/v1/customers/{ann['id']}/merge", json={"other_id": other["id"]}
    )
    assert_error(response, 409, "conflict")
    response = await hub.api.post(
        f"/api/v1/customers/{ann['id']}/merge", json={"other_id": ann["id"]}
    )
    assert_error(response, 409, "conflict")
    # A lookup by the moved email finds the target now.
    found = await hub.api.get("/api/v1/customers", params={"email": "ann.lee@x.example"})
    assert [c["id"] for c in found.json()["items"]] == [ann["id"]]
    history = await hub.api.get(f"/api/v1/customers/{other['id']}/merges")
    assert history.json() == {"items": [merge], "next": None}

    response = await hub.api.post(
        f"/api/v1/merges/{merge['id']}/undo", headers=hub.auth("supervisor")
    )
    assert response.status_code == 200, response.text
    undone = response.json()
    after = await snapshot(hub, ann["id"], other["id"])
    assert after == before
    assert undone == {
        "target": before[ann["id"]]["customer"],
        "other": before[other["id"]]["customer"],
    }
    history = (await hub.api.get(f"/api/v1/customers/{ann['id']}/merges")).json()
    assert history["items"][0]["undone_at"] is not None
    # Undoing twice is a conflict and changes nothing.
    response = await hub.api.post(
        f"/api/v1/merges/{merge['id']}/undo", headers=hub.auth("supervisor")
    )
    assert_error(response, 409, "conflict")
    assert await snapshot(hub, ann["id"], other["id"]) == before


async def test_undo_keeps_what_arrived_for_the_target_after_the_merge(hub: Hub) -> None:
    ann = await hub.create_customer(name="Ann")
    bob = await hub.create_customer(name="Bob")
    await hub.note(bob["id"], "bob's")
    response = await hub.api.post(
        f"/api/v1/customers/{ann['id']}/merge", json={"other_id": bob["id"]}
    )
    merge_id = response.json()["merge"]["id"]
    later = await hub.note(ann["id"], "after the merge")
    response = await hub.api.post(f"/api/v1/merges/{merge_id}/undo", headers=hub.auth("admin"))
    assert response.status_code == 200, response.text
    ann_timeline = (await hub.api.get(f"/api/v1/customers/{ann['id']}/timeline")).json()
    assert [e["id"] for e in ann_timeline["items"]] == [later["id"]]
    bob_timeline = (await hub.api.get(f"/api/v1/customers/{bob['id']}/timeline")).json()
    assert [e["text"] for e in bob_timeline["items"]] == ["bob's"]
