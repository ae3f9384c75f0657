"""Concurrent writers through a real server (uvicorn thread, the session's database)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import InThreadApi, Tokens

#: A real uvicorn (in a thread) and hundreds of concurrent writes: ~15 s on 2 cores.
pytestmark = pytest.mark.slow


@pytest.fixture
def server(clean_db: Tokens, database_url: str) -> Iterator[str]:
    """The app over the session's database, served by uvicorn in a thread (`InThreadApi`)."""
    api = InThreadApi(database_url, clean_db.admin, clean_db.reader)
    api.start()
    try:
        yield f"{api.url}/api/v1"
    finally:
        api.stop()


def test_two_writers_lose_no_update(server: str, tokens: Tokens) -> None:
    with httpx.Client(base_url=server, headers=tokens.header("admin"), timeout=60) as c:
        items = [{"uri": f"c/{i}.wav", "media_type": "audio"} for i in range(300)]
        ids = [i["id"] for i in c.post("/media", json={"items": items}).json()["items"]]

    def durations(chunk: list[int]) -> int:
        with httpx.Client(base_url=server, headers=tokens.header("admin"), timeout=60) as c:
            body = {"items": [{"record_id": i, "duration": i / 10} for i in chunk]}
            return int(c.post("/backfills/media-duration", json=body).json()["applied"])

    def hashes(chunk: list[int]) -> int:
        with httpx.Client(base_url=server, headers=tokens.header("admin"), timeout=60) as c:
            body = {
                "items": [
                    {
                        "record_id": i,
                        "hash": hashlib.sha1(str(i).encode()).hexdigest(),
                        "algorithm": "sha1",
                    }
                    for i in chunk
                ]
            }
            return int(c.post("/backfills/file-hashing", json=body).json()["applied"])

    chunks = [ids[k : k + 25] for k in range(0, len(ids), 25)]
    with ThreadPoolExecutor(8) as pool:
        applied = list(pool.map(durations, chunks)) + list(pool.map(hashes, chunks))
        # Interleave the two kinds too.
        futures = [pool.submit(f, ch) for ch in chunks for f in (durations, hashes)]
        again = [f.result() for f in futures]
    assert sum(applied) == 600 and sum(again) == 0
    with httpx.Client(base_url=server, headers=tokens.header("reader"), timeout=60) as c:
        records = c.get("/media", params={"limit": 1000}).json()["items"]
    for r in records:
        assert r["duration"] == r["id"] / 10
        assert r["hash"] == hashlib.sha1(str(r["id"]).encode()).hexdigest()
        assert r["revision"] == 3  # created, +duration, +hash: no bump lost


def test_compare_and_set_has_one_winner(server: str, tokens: Tokens) -> None:
    with httpx.Client(base_url=server, headers=tokens.header("admin"), timeout=60) as c:
        legacy = c.post("/media", json={"items": [{"uri": "/l/x.wav", "schema_version": 0}]})
        rid = legacy.json()["items"][0]["id"]

    def upgrade(n: int) -> dict[str, object]:
        item = {
            "record_id": rid,
            "expected_revision": 1,
            "uri": f"l/x{n}.wav",
            "media_type": "audio",
            "size_bytes": n,
        }
        with httpx.Client(base_url=server, headers=tokens.header("admin"), timeout=60) as c:
            return dict(c.post("/backfills/version-0", json={"items": [item]}).json())

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(upgrade, range(6)))
    assert sum(r["applied"] for r in results) == 1  # type: ignore[misc]
    rejected = [r["rejected"][0]["reason"] for r in results if r["rejected"]]  # type: ignore[index]
    assert len(rejected) == 5 and all("schema_version 1" in x or "conflict" in x for x in rejected)


def test_same_key_concurrently_applies_once(server: str, tokens: Tokens, database_url: str) -> None:
    from sqlalchemy import text

    from api.core.db import engine_for

    with httpx.Client(base_url=server, headers=tokens.header("admin"), timeout=60) as c:
        ids = [
            i["id"]
            for i in c.post(
                "/media", json={"items": [{"uri": "k.wav", "media_type": "audio"}]}
            ).json()["items"]
        ]
    body = {"items": [{"record_id": ids[0], "error": "boom"}]}

    def post(_: int) -> int:
        with httpx.Client(base_url=server, headers=tokens.header("admin"), timeout=60) as c:
            r = c.post(
                "/backfills/file-hashing/failures", json=body, headers={"Idempotency-Key": "same"}
            )
            return r.status_code

    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(post, range(6)))
    assert codes == [200] * 6
    with engine_for(database_url).connect() as conn:
        attempts = conn.execute(text("SELECT attempts FROM backfill_failures")).scalar_one()
        audits = conn.execute(
            text("SELECT count(*) FROM audit WHERE kind = 'file-hashing/failures'")
        ).scalar_one()
    assert attempts == 1 and audits == 1
