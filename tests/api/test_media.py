from __future__ import annotations

import httpx

from tests.api.utils import register


def test_register_media_reports_existing(client: httpx.Client) -> None:
    body = {
        "items": [
            {"uri": "a/x.wav", "media_type": "audio"},
            {"uri": "a/y.mp4", "media_type": "video"},
        ]
    }
    first = client.post("/media", json=body).json()
    assert first["applied"] == 2 and first["unchanged"] == 0
    assert [i["status"] for i in first["items"]] == ["created", "created"]
    again = client.post(
        "/media", json=body | {"items": body["items"] + [{"uri": "a/z.wav", "media_type": "audio"}]}
    ).json()
    assert again["applied"] == 1 and again["unchanged"] == 2
    assert [i["id"] for i in again["items"][:2]] == [i["id"] for i in first["items"]]
    page = client.get("/media", params={"limit": 10}).json()
    assert [m["uri"] for m in page["items"]] == ["a/x.wav", "a/y.mp4", "a/z.wav"]


def test_register_media_duplicate_within_batch(client: httpx.Client) -> None:
    item = {"uri": "dup.wav", "media_type": "audio"}
    result = client.post("/media", json={"items": [item, item]}).json()
    assert result["applied"] == 1 and result["unchanged"] == 1
    assert result["items"][0]["id"] == result["items"][1]["id"]


def test_register_media_stores_every_value(client: httpx.Client) -> None:
    """Each column of a batch arrives as written, NULLs and extremes included (PostgreSQL
    sends the batch as one array per column)."""
    items = [
        {"uri": "/legacy/é ü.wav", "schema_version": 0},  # no type, no size
        {"uri": "v/big.mp4", "media_type": "video", "size_bytes": 2**63 - 1},
        {"uri": 'q/"quoted",{brace}\\.wav', "schema_version": 0, "size_bytes": 0},
        {"uri": "https://host/a%20b.wav?x=1", "media_type": "audio"},
    ]
    result = client.post("/media", json={"items": items}).json()
    assert result["applied"] == 4 and [i["status"] for i in result["items"]] == ["created"] * 4
    for item, registered in zip(items, result["items"], strict=True):
        record = client.get(f"/media/{registered['id']}").json()
        assert registered["uri"] == record["uri"] == item["uri"]
        assert record["media_type"] == item.get("media_type")
        assert record["size_bytes"] == item.get("size_bytes")
        assert record["schema_version"] == item.get("schema_version", 1)
        assert record["revision"] == 1 and record["created_at"] == record["updated_at"]
    again = client.post("/media", json={"items": items[::-1]}).json()
    assert again["unchanged"] == 4 and again["applied"] == 0
    assert [i["id"] for i in again["items"]] == [i["id"] for i in result["items"]][::-1]


def test_register_media_dry_run_writes_nothing(client: httpx.Client) -> None:
    r = client.post(
        "/media", json={"items": [{"uri": "x.wav", "media_type": "audio"}], "dry_run": True}
    )
    assert r.json()["applied"] == 1 and r.json()["dry_run"] is True
    assert client.get("/media").json()["items"] == []


def test_register_media_rejects_bad_uris(client: httpx.Client) -> None:
    for uri in ["/etc/passwd", "../up.wav", "a/../b.wav", "a//b.wav", "a\\b.wav", ""]:
        r = client.post("/media", json={"items": [{"uri": uri, "media_type": "audio"}]})
        assert r.status_code == 422, uri
    legacy = client.post(
        "/media", json={"items": [{"uri": "/abs/legacy.wav", "schema_version": 0}]}
    )
    assert legacy.status_code == 200 and legacy.json()["applied"] == 1
    missing_type = client.post("/media", json={"items": [{"uri": "ok.wav"}]})
    assert missing_type.status_code == 422


def test_read_media_pages_by_keyset(client: httpx.Client) -> None:
    ids = register(client, 25)
    seen, after = [], 0
    while True:
        page = client.get("/media", params={"after_id": after, "limit": 10}).json()
        seen += [m["id"] for m in page["items"]]
        if page["next_after_id"] is None:
            break
        after = page["next_after_id"]
    assert seen == ids
    assert client.get("/media", params={"limit": 1001}).status_code == 422


def test_read_media_one(client: httpx.Client) -> None:
    (rid,) = register(client, 1)
    record = client.get(f"/media/{rid}").json()
    assert record["uri"] == "a/00000.wav" and record["revision"] == 1
    assert record["schema_version"] == 1 and record["duration"] is None
    assert client.get("/media/999999").status_code == 404
    assert client.get("/media/0").status_code == 422
    assert client.get("/media/abc").status_code == 422


def test_health_needs_no_token(client: httpx.Client) -> None:
    r = client.get("/health", headers={"Authorization": ""})
    assert r.status_code == 200 and r.json()["database"] is True


def test_register_media_is_audited_and_idempotent(client: httpx.Client) -> None:
    body = {"items": [{"uri": "k/a.wav", "media_type": "audio"}]}
    headers = {"Idempotency-Key": "reg-1"}
    first = client.post("/media", json=body, headers=headers).json()
    replay = client.post("/media", json=body, headers=headers).json()
    assert replay == first and first["items"][0]["status"] == "created"
    other = client.post(
        "/media", json={"items": [{"uri": "k/b.wav", "media_type": "audio"}]}, headers=headers
    )
    assert other.status_code == 409


def test_read_media_unknown_filter_and_utc(client: httpx.Client) -> None:
    (rid,) = register(client, 1)
    assert client.get("/media", params={"media_typ": "audio"}).status_code == 422
    listed = client.get("/media").json()["items"][0]
    record = client.get(f"/media/{rid}").json()
    client.post("/backfills/media-duration", json={"items": [{"record_id": rid, "duration": 1.0}]})
    updated = client.get(f"/media/{rid}").json()
    for stamp in (listed["created_at"], record["updated_at"], updated["updated_at"]):
        assert stamp.endswith(("Z", "+00:00")), stamp
