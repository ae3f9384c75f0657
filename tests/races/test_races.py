"""Check-then-act races: each scenario is N concurrent requests let go together behind a
barrier, against a real uvicorn API, on SQLite and on PostgreSQL (READ COMMITTED, where
transactions truly overlap). Statuses are 2xx or a clear 409, never a 5xx; the database then
holds exactly what one serial order would have left."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.races.conftest import N, Race, statuses

pytestmark = pytest.mark.timeout(300)


def _register(race: Race, items: list[dict[str, Any]]) -> list[int]:
    with race.client() as c:
        r = c.post("/media", json={"items": items})
        r.raise_for_status()
        return [i["id"] for i in r.json()["items"]]


def _projects(race: Race, count: int, *, owner: str, tier: str) -> list[int]:
    (media,) = _register(race, [{"uri": "clips/a.mp4", "media_type": "video"}])
    with race.client() as c:
        ids = []
        for i in range(count):
            body = {
                "name": f"p{i}",
                "owner": owner,
                "tier": tier,
                "clips": [{"media_id": media, "start": 0, "end": 1}],
            }
            r = c.post("/projects", json=body)
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
    return ids


def _result(project_id: int, n: int, seconds: float = 60.0) -> dict[str, Any]:
    return {
        "project_id": project_id,
        "output_uri": f"compiled/p{n}.mp4",
        "thumbnail_uri": f"compiled/p{n}.jpg",
        "duration": seconds,
        "hash": f"{n:064x}",
        "size_bytes": 1000 + n,
        "render_seconds": seconds,
    }


def _tier(race: Race, name: str, seconds: float) -> None:
    with race.client() as c:
        body = {"max_clips": 20, "max_height": 720, "monthly_render_seconds": seconds}
        c.put(f"/tiers/{name}", json=body).raise_for_status()


def _outcome(responses: list[httpx.Response], **refusals: str) -> dict[str, Any]:
    """The statuses, the records applied by the 200s and, for each keyword, how many records
    were rejected with a reason containing its text."""
    bodies = [r.json() for r in responses if r.status_code == 200]
    reasons = [x["reason"] for b in bodies for x in b["rejected"]]
    return {
        "statuses": statuses(responses),
        "applied": sum(b["applied"] for b in bodies),
        **{key: sum(text in x for x in reasons) for key, text in refusals.items()},
    }


def _one_applied(refusals: str, **rest: Any) -> dict[str, Any]:
    """What a burst expects when one of its N batches wins: every status 200, one record
    applied, N - 1 refused with the reason counted as `refusals`, and `rest`."""
    return {"statuses": [200] * N, "applied": 1, refusals: N - 1, **rest}


def test_render_quota_is_never_exceeded(race: Race) -> None:
    """100 s a month, 8 projects of one owner, 8 results of 60 s at once: one fits."""
    _tier(race, "tiny", 100)
    ids = _projects(race, N, owner="olga", tier="tiny")
    responses = race.burst(
        lambda c, i: c.post("/backfills/clip-compile", json={"items": [_result(ids[i], i)]})
    )
    ledger = race.rows("SELECT attempts FROM backfill_failures WHERE kind = 'clip-compile'")
    seen = _outcome(responses, quota_refusals="render quota exceeded") | {
        "render_usage_s": race.scalar("SELECT SUM(seconds) FROM render_usage"),
        "usage_rows": race.scalar("SELECT COUNT(*) FROM render_usage"),
        "compiled": race.scalar("SELECT COUNT(*) FROM projects WHERE status = 'compiled'"),
        # Each refused result is one attempt in the ledger, as when they come one by one.
        "ledger_attempts": sorted(a for (a,) in ledger),
    }
    race.record(seen)
    assert seen == _one_applied(
        "quota_refusals",
        render_usage_s=60.0,
        usage_rows=1,
        compiled=1,
        ledger_attempts=[1] * (N - 1),
    )


def test_same_project_result_at_once_is_counted_once(race: Race) -> None:
    """The same result of one project sent N times at once (no key): one applied."""
    _tier(race, "tiny", 100)
    (pid,) = _projects(race, 1, owner="olga", tier="tiny")
    responses = race.burst(
        lambda c, i: c.post("/backfills/clip-compile", json={"items": [_result(pid, 0)]})
    )
    assert statuses(responses) == [200] * N
    bodies = [r.json() for r in responses]
    assert sum(b["applied"] for b in bodies) == 1
    assert sum(b["unchanged"] for b in bodies) == N - 1
    assert race.scalar("SELECT SUM(seconds) FROM render_usage") == 60.0
    assert race.scalar("SELECT COUNT(*) FROM media WHERE uri = 'compiled/p0.mp4'") == 1


def test_same_idempotency_key_at_once_applies_once(race: Race) -> None:
    (pid,) = _projects(race, 1, owner="olga", tier="free")
    body = {"items": [_result(pid, 0)]}
    responses = race.burst(
        lambda c, i: c.post(
            "/backfills/clip-compile", json=body, headers={"Idempotency-Key": "one-render"}
        )
    )
    assert statuses(responses) == [200] * N
    assert {r.text for r in responses} == {responses[0].text}  # replays: the stored answer
    assert responses[0].json()["applied"] == 1
    assert race.scalar("SELECT SUM(seconds) FROM render_usage") == 60.0
    assert race.scalar("SELECT COUNT(*) FROM audit WHERE kind = 'clip-compile'") == 1


def test_same_uris_registered_at_once(race: Race) -> None:
    """N registrations of the same 200 uris at once: 200 records, each reported once created."""
    items = [{"uri": f"same/{i:03d}.wav", "media_type": "audio"} for i in range(200)]
    responses = race.burst(lambda c, i: c.post("/media", json={"items": items}))
    bodies = [r.json() for r in responses if r.status_code == 200]
    seen = {
        "statuses": statuses(responses),
        "media_rows": race.scalar("SELECT COUNT(*) FROM media"),
        "created": sum(b["applied"] for b in bodies),
        "existing": sum(b["unchanged"] for b in bodies),
    }
    race.record(seen)
    assert seen == {
        "statuses": [200] * N,
        "media_rows": 200,
        "created": 200,
        "existing": 200 * (N - 1),
    }
    # Every answer names the one record of each uri.
    stored = dict(race.rows("SELECT uri, id FROM media"))
    for b in bodies:
        assert {x["uri"]: x["id"] for x in b["items"]} == stored


def test_first_failure_of_a_record_at_once(race: Race) -> None:
    """N first failures of one record at once: one ledger row, N attempts."""
    (rid,) = _register(race, [{"uri": "f.wav", "media_type": "audio"}])
    responses = race.burst(
        lambda c, i: c.post(
            "/backfills/file-hashing/failures",
            json={"items": [{"record_id": rid, "error": f"boom {i}"}]},
        )
    )
    seen = {
        "statuses": statuses(responses),
        "ledger": race.rows("SELECT record_id, attempts FROM backfill_failures"),
    }
    race.record(seen)
    assert seen == {"statuses": [200] * N, "ledger": [(rid, N)]}
    assert sum(r.json()["applied"] for r in responses) == N


def test_failures_of_many_records_in_any_order(race: Race) -> None:
    """N failure batches of the same 50 records, each in its own order: no deadlock, no lost
    attempt."""
    ids = _register(race, [{"uri": f"m/{i}.wav", "media_type": "audio"} for i in range(50)])
    orders = [random.Random(i).sample(ids, len(ids)) for i in range(N)]
    responses = race.burst(
        lambda c, i: c.post(
            "/backfills/snr-frequency/failures",
            json={"items": [{"record_id": r, "error": "bad"} for r in orders[i]]},
        )
    )
    attempts = race.rows("SELECT attempts FROM backfill_failures WHERE kind = 'snr-frequency'")
    seen = {
        "statuses": statuses(responses),
        "attempts": sorted(a for (a,) in attempts),
    }
    race.record(seen)
    assert seen == {"statuses": [200] * N, "attempts": [N] * 50}


def test_legacy_records_upgraded_to_one_uri_at_once(race: Race) -> None:
    """N legacy records upgraded at once to the same new uri: one gets it, the others are
    refused by themselves (and counted in the ledger)."""
    ids = _register(race, [{"uri": f"/old/{i}.wav", "schema_version": 0} for i in range(N)])

    def upgrade(c: httpx.Client, i: int) -> httpx.Response:
        item = {
            "record_id": ids[i],
            "expected_revision": 1,
            "uri": "new/same.wav",
            "media_type": "audio",
            "size_bytes": i,
        }
        return c.post("/backfills/version-0", json={"items": [item]})

    responses = race.burst(upgrade)
    seen = _outcome(responses, uri_refusals="already used by record") | {
        "with_new_uri": race.scalar("SELECT COUNT(*) FROM media WHERE uri = 'new/same.wav'"),
        "still_legacy": race.scalar("SELECT COUNT(*) FROM media WHERE schema_version = 0"),
        "ledger": race.scalar("SELECT COUNT(*) FROM backfill_failures WHERE kind = 'version-0'"),
    }
    race.record(seen)
    assert seen == _one_applied("uri_refusals", with_new_uri=1, still_legacy=N - 1, ledger=N - 1)


@pytest.mark.parametrize("name", ["gold", "silver", "bronze"])
def test_same_new_tier_at_once(race: Race, name: str) -> None:
    sent = [
        {"max_clips": 1 + i, "max_height": 720, "monthly_render_seconds": 10.0 * i}
        for i in range(N)
    ]
    responses = race.burst(lambda c, i: c.put(f"/tiers/{name}", json=sent[i]))
    rows = race.rows(
        "SELECT max_clips, max_height, monthly_render_seconds FROM tiers WHERE name = :n", n=name
    )
    seen = {"statuses": statuses(responses), "rows": len(rows)}
    race.record(seen)
    assert seen == {"statuses": [200] * N, "rows": 1}
    columns = ("max_clips", "max_height", "monthly_render_seconds")
    assert dict(zip(columns, rows[0], strict=True)) in sent


@pytest.mark.parametrize("tier", ["gold", None])
def test_same_new_owner_at_once(race: Race, tier: str | None) -> None:
    (media,) = _register(race, [{"uri": "clips/o.mp4", "media_type": "video"}])
    _tier(race, "gold", 500)
    body = {"owner": "newbie", "tier": tier, "clips": [{"media_id": media, "start": 0, "end": 1}]}
    responses = race.burst(lambda c, i: c.post("/projects", json=body | {"name": f"p{i}"}))
    seen = {
        "statuses": statuses(responses),
        "owners": race.rows("SELECT name, tier_name FROM owners"),
        "projects": race.scalar("SELECT COUNT(*) FROM projects"),
        "clips": race.scalar("SELECT COUNT(*) FROM clips"),
    }
    race.record(seen)
    assert seen == {
        "statuses": [201] * N,
        "owners": [("newbie", tier or "free")],
        "projects": N,
        "clips": N,
    }


def test_status_claim_has_one_winner(race: Race) -> None:
    """N workers claim the same queued project at once: one 200, the rest a clear 409."""
    (pid,) = _projects(race, 1, owner="olga", tier="free")
    responses = race.burst(
        lambda c, i: c.put(f"/projects/{pid}/status", json={"status": "compiling"})
    )
    seen = {"statuses": sorted(statuses(responses))}
    race.record(seen)
    assert seen == {"statuses": [200] + [409] * (N - 1)}
    refusals = [r.json()["detail"] for r in responses if r.status_code == 409]
    assert all("Cannot move a project" in x for x in refusals)
    assert race.scalar("SELECT revision FROM projects") == 2


def test_same_output_uri_of_several_owners_at_once(race: Race) -> None:
    """N owners' results name the same output uri with other bytes: the first insert wins,
    the others wait for it and are refused by themselves (no unique violation escapes)."""
    ids = [_projects(race, 1, owner=f"owner{i}", tier="free")[0] for i in range(N)]
    responses = race.burst(
        lambda c, i: c.post(
            "/backfills/clip-compile",
            json={"items": [_result(ids[i], i) | {"output_uri": "compiled/same.mp4"}]},
        )
    )
    seen = _outcome(responses, uri_refusals="output_uri is already used") | {
        "outputs": race.scalar("SELECT COUNT(*) FROM media WHERE uri = 'compiled/same.mp4'"),
        "render_usage_s": race.scalar("SELECT SUM(seconds) FROM render_usage"),
    }
    race.record(seen)
    assert seen == _one_applied("uri_refusals", outputs=1, render_usage_s=60.0)


def test_same_key_other_bodies_at_once(race: Race) -> None:
    """One Idempotency-Key, N different bodies at once: one applied, the others a clear 409."""
    ids = _register(race, [{"uri": f"k/{i}.wav", "media_type": "audio"} for i in range(N)])
    responses = race.burst(
        lambda c, i: c.post(
            "/backfills/media-duration",
            json={"items": [{"record_id": ids[i], "duration": 1.5}]},
            headers={"Idempotency-Key": "shared"},
        )
    )
    seen = {
        "statuses": sorted(statuses(responses)),
        "written": race.scalar("SELECT COUNT(*) FROM media WHERE duration IS NOT NULL"),
        "audit": race.scalar("SELECT COUNT(*) FROM audit WHERE kind = 'media-duration'"),
    }
    race.record(seen)
    assert seen == {"statuses": [200] + [409] * (N - 1), "written": 1, "audit": 1}
    refusals = [r.json()["detail"] for r in responses if r.status_code == 409]
    assert all("Idempotency-Key" in x for x in refusals)


def test_coverage_counts_exact_under_concurrent_writes(race: Race) -> None:
    """Registrations of overlapping uris, result batches, failure reports and coverage reads
    (which fold PostgreSQL's counter rows) all at once: the counters then equal a count over
    the table, and the figures are those of any serial order."""
    from sqlmodel import Session

    from api.services.kinds import KINDS
    from api.services.work import coverage, scan_coverage

    ids = _register(race, [{"uri": f"base/{i:03d}.wav", "media_type": "audio"} for i in range(400)])
    if race.backend == "postgresql":  # past the fold threshold, so the reads fold meanwhile
        with race.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO media_counts (records, current_records, legacy_records,"
                    " duration_todo, sha256_todo, blake2b_todo, sha1_todo, md5_todo, snr_todo)"
                    " SELECT 0, 0, 0, 0, 0, 0, 0, 0, 0 FROM generate_series(1, 300)"
                )
            )

    def one(c: httpx.Client, i: int) -> httpx.Response:
        if i % 4 == 0:  # the same 100 new uris from two clients, plus 20 of its own
            items = [{"uri": f"new/{k:03d}.wav", "media_type": "audio"} for k in range(100)]
            items += [{"uri": f"own/{i}/{k}.wav", "media_type": "audio"} for k in range(20)]
            return c.post("/media", json={"items": items})
        if i % 4 == 1:  # durations of 100 records each, disjoint
            chunk = ids[i * 25 : i * 25 + 100]
            body = {"items": [{"record_id": r, "duration": 1.0} for r in chunk]}
            return c.post("/backfills/media-duration", json=body)
        if i % 4 == 2:  # failures of the same 50 records from two clients
            body = {"items": [{"record_id": r, "error": "bad"} for r in ids[300:350]]}
            return c.post("/backfills/media-duration/failures", json=body)
        return c.get("/backfills")

    responses = race.burst(one)
    assert statuses(responses) == [200] * N, [r.text for r in responses if r.status_code != 200]
    with Session(race.engine) as session:
        counted = coverage(session=session, max_attempts=3, lease_seconds=3600)
        scanned = [scan_coverage(session, kind, 3, 3600) for kind in KINDS]
    assert counted.kinds == scanned
    duration = next(k for k in counted.kinds if k.kind == "media-duration")
    seen = {
        "total": duration.total,
        "done": duration.done,
        "failed": duration.failed,
        "counter_rows": race.scalar("SELECT COUNT(*) FROM media_counts"),
    }
    if race.backend == "postgresql":  # folded by the reads: the 300 and more became a few
        assert seen["counter_rows"] < 10
    race.record(seen)
    written = len({r for i in range(1, N, 4) for r in ids[i * 25 : i * 25 + 100]})
    assert seen["total"] == 400 + 100 + 20 * len(range(0, N, 4))
    assert seen["done"] == written
    assert seen["failed"] == len(set(ids[300:350]) - set(ids[25 : 25 * 5 + 100]))
