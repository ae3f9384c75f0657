from __future__ import annotations

import hashlib
from typing import Any

import httpx

from tests.api.utils import coverage, register


def make_project(client: httpx.Client, **extra: Any) -> tuple[int, list[int]]:
    media = register(client, 3, prefix="clips", media_type="video")
    body = {
        "name": "trailer",
        "owner": "ana",
        "clips": [{"media_id": m, "start": 0.0, "end": 1.0 + i} for i, m in enumerate(media)],
        "intro_media_id": media[0],
        "height": 480,
        "fps": 24,
    } | extra
    r = client.post("/projects", json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"], media


def result(project_id: int, **extra: Any) -> dict[str, Any]:
    return {
        "project_id": project_id,
        "output_uri": f"compiled/p{project_id}.mp4",
        "thumbnail_uri": f"compiled/p{project_id}.jpg",
        "duration": 6.0,
        "hash": hashlib.sha256(b"video").hexdigest(),
        "size_bytes": 1234,
        "render_seconds": 6.0,
    } | extra


def test_compilation_context_one_call(client: httpx.Client) -> None:
    pid, media = make_project(client)
    ctx = client.get(f"/projects/{pid}/compilation-context").json()
    assert [c["media"]["id"] for c in ctx["clips"]] == media
    assert [c["end"] for c in ctx["clips"]] == [1.0, 2.0, 3.0]
    assert ctx["intro"]["id"] == media[0] and ctx["outro"] is None
    assert ctx["tier"] == {
        "name": "free",
        "max_clips": 20,
        "max_height": 720,
        "monthly_render_seconds": 3600.0,
    }
    assert ctx["remaining_render_seconds"] == 3600.0
    assert client.get("/projects/99999/compilation-context").status_code == 404


def test_create_project_unknown_media_or_tier(client: httpx.Client) -> None:
    body = {"name": "x", "owner": "bo", "clips": [{"media_id": 4242, "start": 0, "end": 1}]}
    r = client.post("/projects", json=body)
    assert r.status_code == 404 and "4242" in r.json()["detail"]
    (m,) = register(client, 1)
    r = client.post(
        "/projects", json=body | {"clips": [{"media_id": m, "start": 0, "end": 1}], "tier": "gold"}
    )
    assert r.status_code == 404 and "gold" in r.json()["detail"]
    bad_span = body | {"clips": [{"media_id": m, "start": 2, "end": 1}]}
    assert client.post("/projects", json=bad_span).status_code == 422


def test_status_transitions(client: httpx.Client) -> None:
    pid, _ = make_project(client, status="draft")
    moves = [
        ("compiling", 409),
        ("queued", 200),
        ("compiling", 200),
        ("queued", 409),
        ("failed", 200),
        ("queued", 200),
    ]
    for status, code in moves:
        r = client.put(f"/projects/{pid}/status", json={"status": status, "reason": "x"})
        assert r.status_code == code, (status, r.text)
    project = client.get(f"/projects/{pid}").json()
    assert project["status"] == "queued" and project["reason"] is None


def test_a_keyed_claim_sent_again_gets_its_own_answer(client: httpx.Client) -> None:
    pid, _ = make_project(client)
    claim = {"status": "compiling"}
    mine = {"Idempotency-Key": "run-a:claim"}
    first = client.put(f"/projects/{pid}/status", json=claim, headers=mine)
    again = client.put(f"/projects/{pid}/status", json=claim, headers=mine)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and first.json()["status"] == "compiling"
    # Another run's claim (another key, or none) is still refused.
    other = client.put(f"/projects/{pid}/status", json=claim, headers={"Idempotency-Key": "b"})
    assert other.status_code == 409
    assert client.put(f"/projects/{pid}/status", json=claim).status_code == 409
    # The key belongs to that request: another body under it is a 409 too.
    misuse = client.put(f"/projects/{pid}/status", json={"status": "failed"}, headers=mine)
    assert misuse.status_code == 409 and "different request" in misuse.json()["detail"]
    assert client.get(f"/projects/{pid}").json()["revision"] == first.json()["revision"]


def test_clip_compile_counts_usage_once(client: httpx.Client, database_url: str) -> None:
    from sqlalchemy import text

    from api.core.db import engine_for

    pid, _ = make_project(client)
    assert [
        i["record_id"] for i in client.get("/backfills/clip-compile/pending").json()["items"]
    ] == [pid]
    client.put(f"/projects/{pid}/status", json={"status": "compiling"})
    body = {"items": [result(pid)]}
    headers = {"Idempotency-Key": f"compile-{pid}"}
    first = client.post("/backfills/clip-compile", json=body, headers=headers).json()
    replay = client.post("/backfills/clip-compile", json=body, headers=headers).json()
    unkeyed = client.post("/backfills/clip-compile", json=body).json()
    assert first["applied"] == 1 and replay == first and unkeyed["unchanged"] == 1
    project = client.get(f"/projects/{pid}").json()
    assert project["status"] == "compiled" and project["thumbnail_uri"] == f"compiled/p{pid}.jpg"
    output = client.get(f"/media/{project['output_media_id']}").json()
    assert (
        output["hash"] == hashlib.sha256(b"video").hexdigest() and output["media_type"] == "video"
    )
    with engine_for(database_url).connect() as conn:
        usage = conn.execute(text("SELECT project_id, seconds FROM render_usage")).all()
    assert [tuple(u) for u in usage] == [(pid, 6.0)]
    ctx = client.get(f"/projects/{pid}/compilation-context").json()
    assert ctx["remaining_render_seconds"] == 3600.0 - 6.0
    assert coverage(client, "clip-compile")["done"] == 1


def test_clip_compile_over_quota_fails_the_project_in_the_ledger(client: httpx.Client) -> None:
    client.put("/tiers/tiny", json={"max_clips": 2, "max_height": 240, "monthly_render_seconds": 5})
    pid, _ = make_project(client, tier="tiny")
    over = client.post("/backfills/clip-compile", json={"items": [result(pid)]}).json()
    assert over["applied"] == 0 and "quota" in over["rejected"][0]["reason"]
    project = client.get(f"/projects/{pid}").json()
    assert project["status"] == "failed" and project["reason"] == over["rejected"][0]["reason"]
    ledger = client.get("/backfills/clip-compile/failures").json()["items"]
    assert [(f["record_id"], f["attempts"]) for f in ledger] == [(pid, 1)]
    assert client.get("/backfills/clip-compile/pending").json()["items"] == []
    failed = client.get("/backfills/clip-compile/pending", params={"mode": "failed"}).json()
    assert [i["record_id"] for i in failed["items"]] == [pid]


def test_clip_compile_failure_fails_the_project(client: httpx.Client) -> None:
    pid, _ = make_project(client)
    fail = {"items": [{"record_id": pid, "error": "clip 2 is missing"}]}
    assert client.post("/backfills/clip-compile/failures", json=fail).json()["applied"] == 1
    project = client.get(f"/projects/{pid}").json()
    assert project["status"] == "failed" and project["reason"] == "clip 2 is missing"
    assert client.get("/backfills/clip-compile/pending").json()["items"] == []
    failed = client.get("/backfills/clip-compile/pending", params={"mode": "failed"}).json()
    assert [i["record_id"] for i in failed["items"]] == [pid]


def test_stale_compiling_lease_is_pending_again(client: httpx.Client, database_url: str) -> None:
    from sqlalchemy import text

    from api.core.db import engine_for

    pid, _ = make_project(client)
    client.put(f"/projects/{pid}/status", json={"status": "compiling"})
    assert client.get("/backfills/clip-compile/pending").json()["items"] == []
    assert client.put(f"/projects/{pid}/status", json={"status": "compiling"}).status_code == 409
    with engine_for(database_url).begin() as conn:
        conn.execute(text("UPDATE projects SET updated_at = '2000-01-01 00:00:00+00:00'"))
    assert [
        i["record_id"] for i in client.get("/backfills/clip-compile/pending").json()["items"]
    ] == [pid]
    assert client.put(f"/projects/{pid}/status", json={"status": "compiling"}).status_code == 200


def test_clip_compile_output_uri_taken_by_other_file(client: httpx.Client) -> None:
    pid, media = make_project(client)
    taken = client.get(f"/media/{media[0]}").json()["uri"]
    r = client.post(
        "/backfills/clip-compile", json={"items": [result(pid, output_uri=taken)]}
    ).json()
    assert r["applied"] == 0 and "already used by record" in r["rejected"][0]["reason"]
    assert client.get(f"/media/{media[0]}").json()["hash"] is None


def test_failures_follow_the_status_machine(client: httpx.Client) -> None:
    draft, _ = make_project(client, status="draft")
    r = client.post(
        "/backfills/clip-compile/failures", json={"items": [{"record_id": draft, "error": "x"}]}
    ).json()
    assert r["applied"] == 0 and "draft" in r["rejected"][0]["reason"]
    assert client.get(f"/projects/{draft}").json()["status"] == "draft"


def test_requeue_leaves_quarantine(client: httpx.Client) -> None:
    pid, _ = make_project(client)
    for _ in range(3):
        client.post(
            "/backfills/clip-compile/failures",
            json={"items": [{"record_id": pid, "error": "boom"}]},
        )
        client.put(f"/projects/{pid}/status", json={"status": "queued"})
        client.put(f"/projects/{pid}/status", json={"status": "compiling"})
    client.post(
        "/backfills/clip-compile/failures", json={"items": [{"record_id": pid, "error": "boom"}]}
    )
    assert coverage(client, "clip-compile")["failed"] == 1
    assert client.put(f"/projects/{pid}/status", json={"status": "queued"}).status_code == 200
    pending = client.get("/backfills/clip-compile/pending").json()["items"]
    assert [i["record_id"] for i in pending] == [pid] and pending[0]["attempts"] == 0
