"""Customers over HTTP: identity by any phone format, email lookup, search, read, change."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tests.hub.conftest import Hub, assert_error


def stamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def lookup(hub: Hub, **params: str) -> list[dict[str, Any]]:
    """The customers of a list query that fits one page."""
    response = await hub.api.get("/api/v1/customers", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["next"] is None
    items: list[dict[str, Any]] = body["items"]
    return items


async def test_one_phone_written_every_way_is_one_customer(hub: Hub) -> None:
    created = await hub.create_customer(name="Ann Lee", phones=["(415) 555-0100"])
    assert created["phones"] == ["+14155550100"]
    for spelling in ("415.555.0100", "+1 415 555 0100", "tel:+14155550100", "(415) 555-0100"):
        found = await lookup(hub, phone=spelling)
        assert [c["id"] for c in found] == [created["id"]], spelling
        assert found[0] == created
    assert await lookup(hub, phone="+1 415 555 0199") == []


async def test_the_same_phone_again_is_409(hub: Hub) -> None:
    first = await hub.create_customer(name="Ann", phones=["(415) 555-0100"])
    response = await hub.api.post(
        "/api/v1/customers", json={"name": "Other", "phones": ["+1 415 555 0100"]}
    )
    error = assert_error(response, 409, "conflict")
    assert first["id"] in error["message"]
    # Nothing of the refused customer was kept.
    assert [c["id"] for c in await lookup(hub)] == [first["id"]]


async def test_an_invalid_phone_is_422_naming_it(hub: Hub) -> None:
    response = await hub.api.post(
        "/api/v1/customers", json={"name": "Ann", "phones": ["+14155550100", "12"]}
    )
    error = assert_error(response, 422, "invalid_field")
    assert error["field"] == "phones.1"
    response = await hub.api.post("/api/v1/customers", json={"phones": ["not a number"]})
    assert assert_error(response, 422, "invalid_field")["field"] == "phones.0"
    response = await hub.api.post("/api/v1/customers", json={"emails": ["nobody"]})
    assert assert_error(response, 422, "invalid_field")["field"] == "emails.0"
    response = await hub.api.get("/api/v1/customers", params={"phone": "123"})
    assert assert_error(response, 422, "invalid_field")["field"] == "phone"
    response = await hub.api.get("/api/v1/customers", params={"email": "x@"})
    assert assert_error(response, 422, "invalid_field")["field"] == "email"
    assert await lookup(hub) == []


async def test_lookup_by_email_folds_the_domain_only(hub: Hub) -> None:
    created = await hub.create_customer(name="Ann", emails=["Ann.Lee@Example.COM"])
    assert created["emails"] == ["Ann.Lee@example.com"]
    for spelling in ("Ann.Lee@example.com", "Ann.Lee@EXAMPLE.com", "mailto:Ann.Lee@Example.Com"):
        assert [c["id"] for c in await lookup(hub, email=spelling)] == [created["id"]], spelling
    # RFC 5321: the local part is the mailbox owner's to interpret; it stays exact.
    assert await lookup(hub, email="ann.lee@example.com") == []


async def test_search_by_name_identity_and_note_words(hub: Hub) -> None:
    ann = await hub.create_customer(name="Ann Lee", phones=["+14155550100"])
    bob = await hub.create_customer(name="Bob Stone", emails=["bob@stone.example"])
    await hub.note(bob["id"], "Wants the blue umbrella delivered on Friday")
    await hub.note(ann["id"], "Asked about invoices")

    async def search(q: str) -> list[str]:
        return [c["id"] for c in await lookup(hub, q=q)]

    assert await search("ann") == [ann["id"]]
    assert await search("STONE") == [bob["id"]]
    assert await search("umbrella") == [bob["id"]]
    assert await search("blue umbrella") == [bob["id"]]
    assert await search("invoices") == [ann["id"]]
    assert await search("stone.example") == [bob["id"]]
    assert await search("zebra") == []
    # Query syntax of the search engines is not ours to expose.
    assert await search('"umbrella*') == [bob["id"]]
    assert await search("umbrella) NEAR(") == []
    assert await search("100%") == []


async def test_list_pages_with_a_cursor(hub: Hub) -> None:
    made = {(await hub.create_customer(name=f"Cust {i}"))["id"] for i in range(5)}
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        response = await hub.api.get("/api/v1/customers", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["items"]) <= 2
        seen += [c["id"] for c in body["items"]]
        pages += 1
        cursor = body["next"]
        if cursor is None:
            break
    assert pages == 3
    assert sorted(seen) == sorted(made)


async def test_create_and_read(hub: Hub) -> None:
    body = {
        "name": "Ann Lee",
        "phones": ["(415) 555-0100", "+44 20 7946 0958"],
        "emails": ["ann@example.com"],
        "handles": [{"network": "telegram", "id": "12345"}],
        "timezone": "America/Los_Angeles",
        "attributes": {"tier": "gold", "tags": ["vip"], "visits": 3},
    }
    created = await hub.create_customer(**body)
    assert created["name"] == "Ann Lee"
    assert sorted(created["phones"]) == ["+14155550100", "+442079460958"]
    assert created["emails"] == ["ann@example.com"]
    assert created["handles"] == [{"network": "telegram", "id": "12345"}]
    assert created["timezone"] == "America/Los_Angeles"
    assert created["attributes"] == body["attributes"]
    assert created["merged_into"] is None and created["erased_at"] is None
    assert created["counts"] == {"total": 0}
    assert created["consent"] == []
    read = await hub.api.get(f"/api/v1/customers/{created['id']}")
    assert read.status_code == 200
    assert read.json() == created
    # The handle is an identity too.
    response = await hub.api.post(
        "/api/v1/customers", json={"handles": [{"network": "telegram", "id": "12345"}]}
    )
    assert_error(response, 409, "conflict")


async def test_timezone_is_validated(hub: Hub) -> None:
    response = await hub.api.post("/api/v1/customers", json={"timezone": "Mars/Olympus_Mons"})
    assert assert_error(response, 422, "invalid_field")["field"] == "timezone"
    response = await hub.api.post("/api/v1/customers", json={"timezone": "../../etc/passwd"})
    assert assert_error(response, 422, "invalid_field")["field"] == "timezone"
    ann = await hub.create_customer(name="Ann", timezone="Europe/Berlin")
    response = await hub.api.patch(f"/api/v1/customers/{ann['id']}", json={"timezone": "Nowhere"})
    assert assert_error(response, 422, "invalid_field")["field"] == "timezone"
    response = await hub.api.patch(
        f"/api/v1/customers/{ann['id']}", json={"timezone": "Asia/Tokyo"}
    )
    assert response.status_code == 200
    assert response.json()["timezone"] == "Asia/Tokyo"
    response = await hub.api.patch(f"/api/v1/customers/{ann['id']}", json={"timezone": None})
    assert response.json()["timezone"] is None


async def test_patch_fields_and_attributes_merge_patch(hub: Hub) -> None:
    ann = await hub.create_customer(
        name="Ann", attributes={"tier": "gold", "visits": 3, "tags": ["a", "b"]}
    )
    url = f"/api/v1/customers/{ann['id']}"
    response = await hub.api.patch(
        url, json={"name": "Ann Lee", "attributes": {"visits": 4, "tier": None, "city": "Oslo"}}
    )
    assert response.status_code == 200, response.text
    changed = response.json()
    assert changed["name"] == "Ann Lee"
    assert changed["attributes"] == {"visits": 4, "tags": ["a", "b"], "city": "Oslo"}
    assert stamp(changed["updated_at"]) >= stamp(ann["updated_at"])
    # A field not given is left alone; a list is replaced, not merged (RFC 7396).
    response = await hub.api.patch(url, json={"attributes": {"tags": ["c"]}})
    changed = response.json()
    assert changed["name"] == "Ann Lee"
    assert changed["attributes"] == {"visits": 4, "tags": ["c"], "city": "Oslo"}
    # name: null clears the name.
    response = await hub.api.patch(url, json={"name": None})
    assert response.json()["name"] is None
    read = await hub.api.get(url)
    assert read.json() == response.json()


async def test_attributes_merge_patch_recurses_into_objects(hub: Hub) -> None:
    ann = await hub.create_customer(name="Ann", attributes={"prefs": {"lang": "en", "sms": True}})
    response = await hub.api.patch(
        f"/api/v1/customers/{ann['id']}", json={"attributes": {"prefs": {"sms": None}}}
    )
    assert response.status_code == 200, response.text
    assert response.json()["attributes"] == {"prefs": {"lang": "en"}}


async def test_patch_adds_and_removes_identities(hub: Hub) -> None:
    ann = await hub.create_customer(name="Ann", phones=["+14155550100"], emails=["a@x.example"])
    bob = await hub.create_customer(name="Bob", phones=["+14155550101"])
    url = f"/api/v1/customers/{ann['id']}"
    response = await hub.api.patch(
        url,
        json={
            "add": {
                "phones": ["415-555-0102"],
                "handles": [{"network": "instagram", "id": "ann.lee"}],
            },
            "remove": {"phones": ["(415) 555-0100"], "emails": ["a@X.example"]},
        },
    )
    assert response.status_code == 200, response.text
    changed = response.json()
    assert changed["phones"] == ["+14155550102"]
    assert changed["emails"] == []
    assert changed["handles"] == [{"network": "instagram", "id": "ann.lee"}]
    assert [c["id"] for c in await lookup(hub, phone="4155550102")] == [ann["id"]]
    assert await lookup(hub, phone="4155550100") == []

    # Someone else's number is a conflict, and the whole change is refused.
    response = await hub.api.patch(
        url, json={"name": "Changed", "add": {"phones": ["+14155550101"]}}
    )
    assert_error(response, 409, "conflict")
    assert (await hub.api.get(url)).json()["name"] == "Ann"
    assert [c["id"] for c in await lookup(hub, phone="4155550101")] == [bob["id"]]
    # Removing what the customer does not have is 404.
    response = await hub.api.patch(url, json={"remove": {"emails": ["zed@x.example"]}})
    assert_error(response, 404, "not_found")
    # An invalid identity names where it is.
    response = await hub.api.patch(url, json={"add": {"phones": ["+1", "nope"]}})
    assert assert_error(response, 422, "invalid_field")["field"] == "add.phones.0"
    # The removed number is free again.
    again = await hub.create_customer(phones=["+14155550100"])
    assert again["phones"] == ["+14155550100"]
