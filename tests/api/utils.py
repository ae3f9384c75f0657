"""Factories for API tests."""

from __future__ import annotations

from typing import Any

import httpx


def register(client: httpx.Client, n: int, *, prefix: str = "a", **fields: Any) -> list[int]:
    """Register `n` current media records and return their ids."""
    items = [
        {"uri": f"{prefix}/{i:05d}.wav", "media_type": "audio", "size_bytes": 100 + i} | fields
        for i in range(n)
    ]
    ids: list[int] = []
    for start in range(0, n, 1000):
        r = client.post("/media", json={"items": items[start : start + 1000]})
        assert r.status_code == 200, r.text
        ids += [item["id"] for item in r.json()["items"]]
    return ids


def coverage(client: httpx.Client, kind: str) -> dict[str, Any]:
    r = client.get("/backfills")
    assert r.status_code == 200, r.text
    return next(k for k in r.json()["kinds"] if k["kind"] == kind)
