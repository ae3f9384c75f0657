"""An in-memory stand-in for the backfill endpoints, served through `httpx.MockTransport`.

It keeps the contract's semantics that the engine relies on: pending pages by keyset (done
and quarantined records drop out), results applied or `unchanged`, unknown records
rejected, failures counted per attempt, idempotent replays. Faults can be queued per route.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

import httpx

from api.schemas import BackfillKind
from flows.client import BackfillClient

MAX_ATTEMPTS = 3


class FakeApi:
    def __init__(self, kind: BackfillKind, uris: dict[int, str]) -> None:
        self.kind = kind
        self.uris = uris
        self.values: dict[int, dict[str, Any]] = {}
        self.attempts: Counter[int] = Counter()
        self.errors: dict[int, str] = {}
        self.batches: list[dict[str, Any]] = []
        self.pages: list[dict[str, str]] = []
        self.replays: dict[str, httpx.Response] = {}
        #: Most items one pending page returns, whatever `limit` asks for.
        self.page_cap = 1000
        #: Responses or exceptions to use instead of the real answer, per "METHOD /path".
        self.faults: dict[str, list[httpx.Response | Exception]] = {}
        self.lock = threading.Lock()

    def client(self, **kwargs: Any) -> BackfillClient:
        kwargs.setdefault("sleep", lambda _s: None)
        return BackfillClient(
            "http://fake.test", "token", transport=httpx.MockTransport(self.handle), **kwargs
        )

    def is_pending(self, rid: int, mode: str) -> bool:
        if mode == "all":
            return self.attempts[rid] < MAX_ATTEMPTS
        if rid in self.values:
            return False
        if mode == "failed":
            return self.attempts[rid] > 0
        return self.attempts[rid] < MAX_ATTEMPTS

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/v1")
        route = f"{request.method} {path}"
        with self.lock:
            queued = self.faults.get(route)
            if queued:
                fault = queued.pop(0)
                if isinstance(fault, Exception):
                    raise fault
                return fault
            key = request.headers.get("Idempotency-Key")
            if key and key in self.replays:
                return self.replays[key]
            response = self.answer(request, path)
            if key and response.is_success:
                self.replays[key] = response
            return response

    def answer(self, request: httpx.Request, path: str) -> httpx.Response:
        kind = self.kind.value
        if path == "/backfills":
            pending = sum(self.is_pending(r, False) for r in self.uris)
            failed = sum(1 for r in self.uris if self.attempts[r] and r not in self.values)
            return httpx.Response(
                200,
                json={
                    "kinds": [
                        {
                            "kind": kind,
                            "total": len(self.uris),
                            "done": len(self.values),
                            "pending": pending,
                            "failed": failed,
                            "quarantined": 0,
                        }
                    ]
                },
            )
        if path == f"/backfills/{kind}/pending":
            params = dict(request.url.params)
            self.pages.append(params)
            after, limit = int(params.get("after_id", 0)), int(params.get("limit", 100))
            mode = params.get("mode", "missing")
            count, index = int(params.get("shard_count", 1)), int(params.get("shard_index", 0))
            ids = [
                r
                for r in sorted(self.uris)
                if r > after and r % count == index and self.is_pending(r, mode)
            ]
            limit = min(limit, self.page_cap)
            page = ids[:limit]
            items = [
                {"record_id": r, "revision": 1, "uri": self.uris[r], "attempts": self.attempts[r]}
                for r in page
            ]
            return httpx.Response(
                200,
                json={
                    "kind": kind,
                    "items": items,
                    "next_after_id": page[-1] if len(ids) > limit else None,
                },
            )
        body = json.loads(request.content)
        if path == f"/backfills/{kind}":
            self.batches.append(body)
            applied, unchanged, rejected = 0, 0, []
            for item in body["items"]:
                rid = item.pop("record_id")
                # Every result carries its compute version; the fake keeps only the values.
                assert item.pop("compute_version") >= 1
                if rid not in self.uris:
                    rejected.append({"record_id": rid, "reason": "record not found"})
                elif self.values.get(rid) == item:
                    unchanged += 1
                else:
                    applied += 1
                    if not body["dry_run"]:
                        self.values[rid] = item
            return httpx.Response(
                200,
                json={
                    "applied": applied,
                    "unchanged": unchanged,
                    "rejected": rejected,
                    "dry_run": body["dry_run"],
                },
            )
        if path == f"/backfills/{kind}/failures":
            for item in body["items"]:
                self.attempts[item["record_id"]] += 1
                self.errors[item["record_id"]] = item["error"]
            n = len(body["items"])
            return httpx.Response(
                200, json={"applied": n, "unchanged": 0, "rejected": [], "dry_run": False}
            )
        return httpx.Response(404, json={"detail": "Not Found"})
