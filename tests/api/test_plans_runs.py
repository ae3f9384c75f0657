"""`/plans` and `/runs` through the real app over the test database (SQLite, or PostgreSQL
with BACKFILL_TEST_DATABASE_URL)."""

from __future__ import annotations

import httpx
import pytest

from tests.api.utils import register
from tests.conftest import Tokens

RUN = {"flow_run_id": "0b7c-run", "kind": "media-duration", "parameters": {"limit": 3}}


def test_a_plan_lists_its_records_with_revisions(client: httpx.Client, tokens: Tokens) -> None:
    ids = register(client, 5)
    client.post("/backfills/media-duration", json={"items": [{"record_id": ids[0], "duration": 1}]})

    made = client.post("/plans", json={"kind": "media-duration", "parameters": {"limit": 3}})

    assert made.status_code == 201, made.text
    plan = made.json()
    assert (plan["count"], plan["mode"], plan["compute_version"]) == (3, "missing", 1)
    assert plan["token_name"] == "admin" and plan["parameters"] == {
        "media_type": None,
        "algorithm": None,
        "shard_index": 0,
        "shard_count": 1,
        "limit": 3,
    }
    assert plan["items"] == [{"record_id": r, "revision": 1} for r in ids[1:4]]
    reader = tokens.header("reader")
    page = client.get(f"/plans/{plan['id']}/items", params={"limit": 2}, headers=reader).json()
    assert [i["record_id"] for i in page["items"]] == ids[1:3]
    assert page["next_after_id"] == ids[2]
    rest = client.get(f"/plans/{plan['id']}/items", params={"after_id": ids[2]}).json()
    assert [i["record_id"] for i in rest["items"]] == [ids[3]] and rest["next_after_id"] is None
    read = client.get(f"/plans/{plan['id']}", headers=reader).json()
    assert read["counts"] == {"planned": 3, "todo": 3, "changed": 0, "done": 0}
    work = client.get(f"/plans/{plan['id']}/work").json()
    assert [(i["record_id"], i["status"], i["uri"]) for i in work["items"]] == [
        (ids[1], "todo", "a/00001.wav"),
        (ids[2], "todo", "a/00002.wav"),
        (ids[3], "todo", "a/00003.wav"),
    ]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"kind": "media-duration", "mode": "all"}, "plans take mode missing, failed, stale"),
        (
            {"kind": "media-duration", "parameters": {"algorithm": "md5"}},
            "algorithm applies to file-hashing only",
        ),
        (
            {"kind": "clip-compile", "parameters": {"media_type": "audio"}},
            "media_type does not apply to clip-compile",
        ),
        (
            {"kind": "version-0", "parameters": {"shard_index": 2, "shard_count": 2}},
            "shard_index must be less than shard_count",
        ),
        ({"kind": "version-0", "parameters": {"mdia_type": "audio"}}, "Extra inputs"),
        ({"kind": "nope"}, "Input should be"),
    ],
)
def test_bad_plans_are_422(client: httpx.Client, body: dict[str, object], says: str) -> None:
    answer = client.post("/plans", json=body)

    assert answer.status_code == 422 and says in answer.text, answer.text


def test_plans_need_an_admin_to_make_and_exist_to_read(
    client: httpx.Client, tokens: Tokens
) -> None:
    denied = client.post("/plans", json={"kind": "version-0"}, headers=tokens.header("reader"))
    assert denied.status_code == 403
    assert client.get("/plans/unknown").status_code == 404
    assert client.get("/plans/unknown/work").status_code == 404
    assert client.get("/plans/bad%20id").status_code == 422
    reader_work = client.get("/plans/x/work", headers=tokens.header("reader"))
    assert reader_work.status_code == 403


def test_a_run_starts_once_per_flow_run_and_ends_with_its_counts(
    client: httpx.Client, tokens: Tokens
) -> None:
    first = client.post("/runs", json=RUN)
    retried = client.post("/runs", json=RUN)  # the client's retry after a lost answer

    assert first.status_code == retried.status_code == 200, first.text
    assert first.json()["id"] == retried.json()["id"]
    listed = client.get("/runs", headers=tokens.header("reader")).json()["items"]
    assert [(r["flow_run_id"], r["state"], r["parameters"]) for r in listed] == [
        ("0b7c-run", "running", {"limit": 3})
    ]

    ended = client.post("/runs/0b7c-run/end", json={"state": "completed", "applied": 3})
    assert ended.json()["state"] == "completed" and ended.json()["applied"] == 3

    again = client.post("/runs", json=RUN | {"attempt": 2})  # a Retry of the flow run
    assert again.json()["state"] == "running" and again.json()["ended_at"] is None
    event = client.post("/runs/0b7c-run/events", json={"event": "pause", "reason": "50% failed"})
    assert [(e["event"], e["reason"]) for e in event.json()["events"]] == [
        ("retry", "attempt 2"),
        ("pause", "50% failed"),
    ]
    assert len(client.get("/runs").json()["items"]) == 1
    assert client.get("/runs", params={"kind": "version-0"}).json()["items"] == []


def test_run_writes_need_an_admin_and_a_known_run(client: httpx.Client, tokens: Tokens) -> None:
    assert client.post("/runs", json=RUN, headers=tokens.header("reader")).status_code == 403
    assert client.post("/runs/none/end", json={"state": "failed"}).status_code == 404
    assert client.post("/runs/none/events", json={"event": "pause"}).status_code == 404
    assert client.post("/runs", json=RUN | {"kind": "nope"}).status_code == 422
    assert client.post("/runs", json=RUN | {"dry_run": "yes"}).status_code == 422
    bad_event = client.post("/runs/none/events", json={"event": "Pause!"})
    assert bad_event.status_code == 422
    assert client.get("/runs", params={"limit": 0}).status_code == 422
