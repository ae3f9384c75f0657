from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from api.core.config import Settings
from api.logging import configure_logging
from api.main import create_app
from tests.api.utils import register
from tests.conftest import Tokens


@pytest.fixture
def fresh_client(tokens: Tokens, app_settings: Settings) -> Iterator[httpx.Client]:
    """A client of an app of its own, whose metrics count from zero (the session's app has
    counted every earlier test's requests)."""
    with TestClient(create_app(app_settings), base_url="http://testserver/api/v1") as c:
        c.headers.update(tokens.header("admin"))
        yield c


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = line[len(name) + 1 : line.index("}")]
            if ",".join(sorted(got.split(","))) == want:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_rows_per_kind(fresh_client: httpx.Client) -> None:
    client = fresh_client
    ids = register(client, 3)
    items = [{"record_id": i, "duration": 1.0} for i in ids] + [
        {"record_id": 99999, "duration": 1.0}
    ]
    client.post(
        "/backfills/media-duration", json={"items": items}, headers={"Idempotency-Key": "m1"}
    )
    client.post(
        "/backfills/media-duration", json={"items": items}, headers={"Idempotency-Key": "m1"}
    )
    client.post("/backfills/media-duration", json={"items": items[:1]})
    client.post("/backfills/media-duration", json={"items": items, "dry_run": True})
    client.post(
        "/backfills/file-hashing/failures", json={"items": [{"record_id": ids[0], "error": "x"}]}
    )
    text = client.get("http://testserver/metrics").text
    rows = "backfill_rows_total"
    assert (
        metric(text, rows, kind="media-duration", outcome="applied") == 3
    )  # replay, dry run not counted
    assert metric(text, rows, kind="media-duration", outcome="unchanged") == 1
    assert metric(text, rows, kind="media-duration", outcome="rejected") == 1
    assert metric(text, rows, kind="file-hashing", outcome="failed") == 1
    assert metric(text, rows, kind="media", outcome="applied") == 3
    requests = metric(
        text,
        "http_requests_total",
        handler="/api/v1/backfills/media-duration",
        method="POST",
        status="2xx",
    )
    assert requests == 4
    assert "http_request_duration_seconds_bucket" in text


def test_json_log_lines_carry_flow_run_id(client: httpx.Client) -> None:
    stream = io.StringIO()
    configure_logging(json_lines=True)
    handler = logging.getLogger().handlers[0]
    handler.setStream(stream)  # type: ignore[attr-defined]
    try:
        client.get("/backfills", headers={"X-Prefect-Flow-Run-Id": "run-42"})
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [entry for entry in lines if entry["logger"] == "api.access"]
    assert access[-1]["flow_run_id"] == "run-42" and access[-1]["status"] == 200
    assert access[-1]["path"] == "/api/v1/backfills"
    assert "Bearer" not in stream.getvalue() and "cbk_" not in stream.getvalue()


def test_every_response_gets_its_access_line_5xx_too(
    app_settings,  # type: ignore[no-untyped-def]
    clean_db,  # type: ignore[no-untyped-def]
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An error no handler knows is a plain 500 with its traceback and its access line; a
    constraint violation that escapes the services is a 409 that says so, never a 500."""
    from fastapi.testclient import TestClient
    from sqlalchemy.exc import IntegrityError

    from api.main import create_app

    app = create_app(app_settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    @app.get("/unique")
    def unique() -> None:
        raise IntegrityError("INSERT ...", {}, Exception("UNIQUE constraint failed: tiers.name"))

    caplog.set_level(logging.INFO)
    with TestClient(app, raise_server_exceptions=True) as c:
        crashed = c.get("/boom")
        conflict = c.get("/unique")
    assert crashed.status_code == 500 and crashed.json() == {"detail": "Internal server error"}
    assert conflict.status_code == 409
    assert "UNIQUE constraint failed: tiers.name" in conflict.json()["detail"]
    lines = [(r.name, r.getMessage()) for r in caplog.records]
    assert ("api.access", "GET /boom 500") in lines
    assert ("api.access", "GET /unique 409") in lines
    (crash,) = [r for r in caplog.records if r.getMessage() == "unhandled error on GET /boom"]
    assert crash.exc_info is not None and "a bug" in str(crash.exc_info[1])
