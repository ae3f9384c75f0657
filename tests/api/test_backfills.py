from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime

import httpx
import pytest

from api.core.config import Settings
from tests.api.utils import coverage, register


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_duration_batch_mixed_items(client: httpx.Client) -> None:
    ids = register(client, 3)
    legacy = client.post("/media", json={"items": [{"uri": "/old/x.wav", "schema_version": 0}]})
    legacy_id = legacy.json()["items"][0]["id"]
    body = {
        "items": [
            {"record_id": ids[0], "duration": 1.5},
            {"record_id": ids[1], "duration": 0.0},
            {"record_id": 999_999, "duration": 2.0},
            {"record_id": legacy_id, "duration": 2.0},
            {"record_id": ids[0], "duration": 9.0},
        ]
    }
    result = client.post("/backfills/media-duration", json=body).json()
    assert result["applied"] == 2 and result["unchanged"] == 0
    reasons = {r["record_id"]: r["reason"] for r in result["rejected"]}
    assert reasons[999_999] == "record not found"
    assert "legacy" in reasons[legacy_id]
    assert "duplicate" in reasons[ids[0]]
    record = client.get(f"/media/{ids[0]}").json()
    assert record["duration"] == 1.5 and record["revision"] == 2
    # The same values again are unchanged, and bump nothing.
    again = client.post("/backfills/media-duration", json={"items": body["items"][:2]}).json()
    assert again == {"applied": 0, "unchanged": 2, "rejected": [], "dry_run": False}
    assert client.get(f"/media/{ids[0]}").json()["revision"] == 2


@pytest.mark.parametrize(
    "item",
    [
        {"duration": -1.0},
        {"duration": "NaN"},
        {"duration": "Infinity"},
        {"duration": "long"},
        {"duration": 1.0, "extra": 1},
        {},
    ],
)
def test_duration_batch_invalid_is_422(client: httpx.Client, item: dict[str, object]) -> None:
    (rid,) = register(client, 1)
    r = client.post("/backfills/media-duration", json={"items": [{"record_id": rid, **item}]})
    assert r.status_code == 422
    assert client.get(f"/media/{rid}").json()["duration"] is None


def test_batch_over_limit_is_422_with_message(client: httpx.Client) -> None:
    items = [{"record_id": i + 1, "duration": 1.0} for i in range(1001)]
    r = client.post("/backfills/media-duration", json={"items": items})
    assert r.status_code == 422
    assert "at most 1000" in r.text
    assert len(r.content) < 2000  # the error names the problem; it does not echo the batch


def test_hash_batch_validates_digest_length(client: httpx.Client) -> None:
    (rid,) = register(client, 1)
    good = {"record_id": rid, "hash": sha(b"x"), "algorithm": "sha256"}
    assert client.post("/backfills/file-hashing", json={"items": [good]}).json()["applied"] == 1
    for bad in [
        good | {"algorithm": "md5"},
        good | {"hash": good["hash"].upper()},
        good | {"hash": "z" * 64},
        good | {"algorithm": "crc32"},
    ]:
        assert client.post("/backfills/file-hashing", json={"items": [bad]}).status_code == 422
    md5 = {"record_id": rid, "hash": hashlib.md5(b"x").hexdigest(), "algorithm": "md5"}
    assert client.post("/backfills/file-hashing", json={"items": [md5]}).json()["applied"] == 1
    record = client.get(f"/media/{rid}").json()
    # One digest per algorithm: the md5 joins the sha256, which `hash` still shows.
    assert record["digests"] == {
        "sha256": {"digest": sha(b"x"), "compute_version": 1},
        "md5": {"digest": md5["hash"], "compute_version": 1},
    }
    assert (record["hash"], record["hash_algorithm"]) == (sha(b"x"), "sha256")


def test_hash_pending_by_algorithm(client: httpx.Client) -> None:
    ids = register(client, 2)
    md5 = {"record_id": ids[0], "hash": hashlib.md5(b"x").hexdigest(), "algorithm": "md5"}
    client.post("/backfills/file-hashing", json={"items": [md5]})
    sha_page = client.get("/backfills/file-hashing/pending").json()
    assert [i["record_id"] for i in sha_page["items"]] == ids
    md5_page = client.get("/backfills/file-hashing/pending", params={"algorithm": "md5"}).json()
    assert [i["record_id"] for i in md5_page["items"]] == [ids[1]]


def test_snr_frequency_nyquist_rejected(client: httpx.Client) -> None:
    legacy = client.post(
        "/media", json={"items": [{"uri": "/old/a.wav", "schema_version": 0}]}
    ).json()["items"][0]["id"]
    upgrade = {
        "record_id": legacy,
        "expected_revision": 1,
        "uri": "old/a.wav",
        "media_type": "audio",
        "size_bytes": 10,
        "sample_rate": 8000,
        "channels": 1,
    }
    assert client.post("/backfills/version-0", json={"items": [upgrade]}).json()["applied"] == 1
    too_high = {"record_id": legacy, "snr": 10.0, "frequency": 4500.0}
    dry = {"items": [too_high], "dry_run": True}
    assert client.post("/backfills/snr-frequency", json=dry).json()["rejected"]
    assert client.get("/backfills/snr-frequency/failures").json()["items"] == []
    for attempt in (1, 2):
        result = client.post("/backfills/snr-frequency", json={"items": [too_high]}).json()
        assert result["applied"] == 0 and "Nyquist" in result["rejected"][0]["reason"]
        # A value refused for good is a failure-ledger attempt, as a bad file is.
        ledger = client.get("/backfills/snr-frequency/failures").json()["items"]
        assert [(f["record_id"], f["attempts"]) for f in ledger] == [(legacy, attempt)]
        assert "Nyquist" in ledger[0]["last_error"]
    ok = {"record_id": legacy, "snr": 10.0, "frequency": 440.0}
    assert client.post("/backfills/snr-frequency", json={"items": [ok]}).json()["applied"] == 1
    assert client.get("/backfills/snr-frequency/failures").json()["items"] == []
    for bad in [{"snr": 1e9}, {"frequency": 0}, {"frequency": -5}, {"snr": "NaN"}]:
        body = {"items": [ok | bad]}
        assert client.post("/backfills/snr-frequency", json=body).status_code == 422


def test_version0_compare_and_set(client: httpx.Client) -> None:
    legacy = client.post(
        "/media",
        json={"items": [{"uri": f"/srv/old/{n}.wav", "schema_version": 0} for n in "abc"]},
    ).json()
    a, b, c = (i["id"] for i in legacy["items"])
    register(client, 1, prefix="taken")

    def item(rid: int, uri: str, rev: int = 1) -> dict[str, object]:
        return {
            "record_id": rid,
            "expected_revision": rev,
            "uri": uri,
            "media_type": "audio",
            "size_bytes": 44,
        }

    result = client.post(
        "/backfills/version-0",
        json={
            "items": [
                item(a, "old/a.wav"),
                item(b, "old/b.wav", rev=7),
                item(c, "taken/00000.wav"),
            ]
        },
    ).json()
    assert result["applied"] == 1
    reasons = {r["record_id"]: r["reason"] for r in result["rejected"]}
    assert reasons[b].startswith("conflict") and "already used" in reasons[c]
    record = client.get(f"/media/{a}").json()
    assert (
        record["uri"] == "old/a.wav" and record["schema_version"] == 1 and record["revision"] == 2
    )
    # A replay of the applied upgrade is unchanged; a different one is rejected.
    again = client.post("/backfills/version-0", json={"items": [item(a, "old/a.wav")]}).json()
    assert again["unchanged"] == 1
    other = client.post("/backfills/version-0", json={"items": [item(a, "old/z.wav")]}).json()
    assert other["rejected"][0]["reason"] == "conflict: record is at revision 2, expected 1"
    current = {"items": [item(a, "old/z.wav", rev=2)]}
    upgraded = client.post("/backfills/version-0", json=current).json()
    assert upgraded["rejected"][0]["reason"] == "record is already schema_version 1"
    assert (
        client.post("/backfills/version-0", json={"items": [item(b, "/abs/path.wav")]}).status_code
        == 422
    )


def test_dry_run_writes_nothing(client: httpx.Client) -> None:
    ids = register(client, 2)
    items = [{"record_id": ids[0], "duration": 3.0}, {"record_id": 424242, "duration": 1.0}]
    result = client.post("/backfills/media-duration", json={"items": items, "dry_run": True}).json()
    assert result["applied"] == 1 and result["dry_run"] is True and len(result["rejected"]) == 1
    assert client.get(f"/media/{ids[0]}").json()["duration"] is None
    assert coverage(client, "media-duration")["done"] == 0
    failures = {"items": [{"record_id": ids[1], "error": "boom"}], "dry_run": True}
    assert client.post("/backfills/media-duration/failures", json=failures).json()["applied"] == 1
    assert coverage(client, "media-duration")["failed"] == 0


def test_idempotent_replay_and_key_misuse(client: httpx.Client) -> None:
    ids = register(client, 2)
    body = {"items": [{"record_id": ids[0], "duration": 1.0}]}
    headers = {"Idempotency-Key": "batch-1"}
    first = client.post("/backfills/media-duration", json=body, headers=headers)
    # Someone else changes the record in between: the replay must not re-apply.
    client.post(
        "/backfills/media-duration", json={"items": [{"record_id": ids[0], "duration": 5.0}]}
    )
    replay = client.post("/backfills/media-duration", json=body, headers=headers)
    assert (
        replay.json()
        == first.json()
        == {"applied": 1, "unchanged": 0, "rejected": [], "dry_run": False}
    )
    assert client.get(f"/media/{ids[0]}").json()["duration"] == 5.0
    other = {"items": [{"record_id": ids[1], "duration": 2.0}]}
    misuse = client.post("/backfills/media-duration", json=other, headers=headers)
    assert misuse.status_code == 409 and "different request" in misuse.json()["detail"]
    cross = client.post("/backfills/file-hashing/failures", json={"items": []}, headers=headers)
    assert cross.status_code == 409
    assert client.get(f"/media/{ids[1]}").json()["duration"] is None


def test_idempotency_keys_are_kept_for_their_window_then_purged(
    client: httpx.Client, database_url: str, app_settings: Settings
) -> None:
    from fastapi.testclient import TestClient
    from sqlalchemy import text

    from api.core.db import engine_for
    from api.lifespan import purge_expired_keys
    from api.main import create_app

    ids = register(client, 1)
    body = {"items": [{"record_id": ids[0], "duration": 1.0}]}
    for key in ("old", "new"):
        sent = client.post("/backfills/media-duration", json=body, headers={"Idempotency-Key": key})
        assert sent.status_code == 200
    engine = engine_for(database_url)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE idempotency_keys SET created_at = :t WHERE key = 'old'"),
            {"t": datetime(2000, 1, 1, tzinfo=UTC)},
        )

    def keys() -> list[str]:
        with engine.connect() as conn:
            return list(conn.execute(text("SELECT key FROM idempotency_keys")).scalars())

    # The server purges at start-up (then hourly), in the background.
    with TestClient(create_app(app_settings.model_copy(update={"IDEMPOTENCY_KEY_HOURS": 1}))):
        deadline = time.monotonic() + 10
        while keys() != ["new"] and time.monotonic() < deadline:
            time.sleep(0.05)
    assert keys() == ["new"]
    assert purge_expired_keys(engine, hours=1) == 0
    # A forgotten key is a new request: other values under it apply, not a 409.
    other = {"items": [{"record_id": ids[0], "duration": 2.0}]}
    again = client.post("/backfills/media-duration", json=other, headers={"Idempotency-Key": "old"})
    assert again.json()["applied"] == 1
    misuse = client.post(
        "/backfills/media-duration", json=other, headers={"Idempotency-Key": "new"}
    )
    assert misuse.status_code == 409


def test_audit_row_per_batch(client: httpx.Client, database_url: str) -> None:
    from sqlalchemy import text

    from api.core.db import engine_for

    ids = register(client, 1)
    headers = {"X-Prefect-Flow-Run-Id": "run-123", "Idempotency-Key": "k1"}
    body = {"items": [{"record_id": ids[0], "duration": 1.0}]}
    client.post("/backfills/media-duration", json=body, headers=headers)
    client.post("/backfills/media-duration", json=body, headers=headers)  # replay: no new row
    with engine_for(database_url).connect() as conn:
        rows = conn.execute(
            text(
                "SELECT token_name, kind, applied, flow_run_id, dry_run FROM audit"
                " WHERE kind = 'media-duration'"
            )
        ).all()
    assert [tuple(r) for r in rows] == [("admin", "media-duration", 1, "run-123", False)]


def test_failures_quarantine_and_mode_failed(client: httpx.Client) -> None:
    ids = register(client, 3)
    fail = {"items": [{"record_id": ids[0], "error": "corrupt header"}]}
    for attempt in range(1, 4):
        client.post("/backfills/media-duration/failures", json=fail)
        cov = coverage(client, "media-duration")
        assert cov["failed"] == 1 and cov["quarantined"] == (1 if attempt >= 3 else 0)
    pending = client.get("/backfills/media-duration/pending").json()
    assert [i["record_id"] for i in pending["items"]] == ids[1:]
    failed = client.get("/backfills/media-duration/pending", params={"mode": "failed"}).json()
    assert [(i["record_id"], i["attempts"]) for i in failed["items"]] == [(ids[0], 3)]
    # The deprecated spelling still works.
    alias = client.get("/backfills/media-duration/pending", params={"only_failed": True}).json()
    assert alias == failed
    cov = coverage(client, "media-duration")
    assert cov == {
        "kind": "media-duration",
        "algorithm": None,
        "total": 3,
        "done": 0,
        "pending": 2,
        "failed": 1,
        "quarantined": 1,
        "versions": {},
    }
    # Success clears the ledger.
    client.post(
        "/backfills/media-duration", json={"items": [{"record_id": ids[0], "duration": 1.0}]}
    )
    cov = coverage(client, "media-duration")
    assert (cov["done"], cov["failed"], cov["quarantined"], cov["pending"]) == (1, 0, 0, 2)
    unknown = client.post(
        "/backfills/media-duration/failures", json={"items": [{"record_id": 777777, "error": "x"}]}
    )
    assert unknown.json()["rejected"] == [{"record_id": 777777, "reason": "record not found"}]


def test_pending_pages_shards_and_filters(client: httpx.Client) -> None:
    audio = register(client, 7)
    video = register(client, 3, prefix="v", media_type="video")
    every: list[int] = []
    for shard in range(3):
        after, got = 0, []
        while True:
            page = client.get(
                "/backfills/media-duration/pending",
                params={"shard_index": shard, "shard_count": 3, "limit": 2, "after_id": after},
            ).json()
            got += [i["record_id"] for i in page["items"]]
            if page["next_after_id"] is None:
                break
            after = page["next_after_id"]
        assert all(rid % 3 == shard for rid in got)
        every += got
    assert sorted(every) == sorted(audio + video)
    vids = client.get("/backfills/media-duration/pending", params={"media_type": "video"}).json()
    assert [i["record_id"] for i in vids["items"]] == video
    for params in [
        {"bogus": 1},
        {"shard_index": 3, "shard_count": 3},
        {"limit": 0},
        {"algorithm": "md5"},
        {"mode": "sometimes"},
        {"mode": "stale"},  # needs compute_version
        {"mode": "missing", "compute_version": 2},  # stale only
        {"mode": "stale", "compute_version": 0},
        {"only_failed": True, "mode": "all"},
    ]:
        assert client.get("/backfills/media-duration/pending", params=params).status_code == 422
    assert client.get("/backfills/nope/pending").status_code == 404
    assert client.post("/backfills/nope/failures", json={"items": []}).status_code == 404
    assert client.post("/backfills/nope", json={"items": []}).status_code in (404, 405)


def test_coverage_after_each_step(client: httpx.Client) -> None:
    ids = register(client, 4)
    client.post("/media", json={"items": [{"uri": "/legacy/q.wav", "schema_version": 0}]})
    assert coverage(client, "media-duration") | {"kind": None} == {
        "kind": None,
        "algorithm": None,
        "total": 4,
        "done": 0,
        "pending": 4,
        "failed": 0,
        "quarantined": 0,
        "versions": {},
    }
    assert coverage(client, "version-0")["pending"] == 1
    client.post(
        "/backfills/media-duration",
        json={"items": [{"record_id": i, "duration": 1.0} for i in ids[:3]]},
    )
    assert coverage(client, "media-duration")["done"] == 3
    assert coverage(client, "media-duration")["pending"] == 1
    assert coverage(client, "media-duration")["versions"] == {"1": 3}
    assert coverage(client, "file-hashing")["pending"] == 4


def test_failure_ledger_lists_reasons(client: httpx.Client) -> None:
    ids = register(client, 3)
    fail = {
        "items": [
            {"record_id": ids[0], "error": "truncated header"},
            {"record_id": ids[2], "error": "empty file"},
        ]
    }
    for _ in range(3):
        client.post("/backfills/media-duration/failures", json=fail | {"items": fail["items"][:1]})
    client.post("/backfills/media-duration/failures", json={"items": fail["items"][1:]})
    page = client.get("/backfills/media-duration/failures").json()
    assert [
        (i["record_id"], i["uri"], i["attempts"], i["quarantined"], i["last_error"])
        for i in page["items"]
    ] == [
        (ids[0], "a/00000.wav", 3, True, "truncated header"),
        (ids[2], "a/00002.wav", 1, False, "empty file"),
    ]
    only = client.get(
        "/backfills/media-duration/failures", params={"quarantined_only": True}
    ).json()
    assert [i["record_id"] for i in only["items"]] == [ids[0]]
    first = client.get("/backfills/media-duration/failures", params={"limit": 1}).json()
    assert first["next_after_id"] == ids[0]
    assert client.get("/backfills/file-hashing/failures").json()["items"] == []
    assert client.get("/backfills/nope/failures").status_code == 404
