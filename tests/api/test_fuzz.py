"""Property-based fuzzing of every endpoint with schemathesis, against the app's own OpenAPI.

The app runs in-process (ASGI) over the session database (SQLite, or PostgreSQL when
BACKFILL_TEST_DATABASE_URL is set) with an admin token, seeded with a few media records and
projects so that small ids resolve. Every generated request, valid or deliberately invalid,
must get a documented status (never a 5xx) and a body that matches the documented schema.
Generation is derandomized and bounded, so CI runs the same few hundred cases every time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance
from schemathesis.specs.openapi.schemas import OpenApiSchema
from sqlalchemy import text

from tests.conftest import TABLES

#: Cases per operation in the fuzzing phase (the examples and coverage phases come on top:
#: every boundary and negative case of each operation). Derandomized, so every run sends
#: the same cases: 25 cost 43 s of CPU, 50 cost 59 s (docs/testing.md, fifth look).
MAX_EXAMPLES = 25


def _reset(database_url: str) -> None:
    """Empty every table and restart the id sequences, so the seeded ids are 1, 2, 3, ..."""
    from api.core.db import engine_for

    engine = engine_for(database_url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        else:
            for table in TABLES:
                conn.execute(text(f"DELETE FROM {table}"))
        conn.execute(text("DELETE FROM tiers WHERE name <> 'free'"))


def _seed(client: TestClient) -> None:
    """Current and legacy media, a second tier, and projects in several states."""

    def ok(response: Any) -> Any:
        assert response.status_code < 300, response.text
        return response.json()

    items: list[dict[str, Any]] = [
        {"uri": f"seed/{i}.wav", "media_type": "audio", "size_bytes": 1000 + i} for i in range(4)
    ]
    items += [{"uri": "seed/clip.mp4", "media_type": "video", "size_bytes": 5000}]
    items += [{"uri": "/legacy/old.wav", "schema_version": 0}]
    ids = [item["id"] for item in ok(client.post("/media", json={"items": items}))["items"]]
    assert ids == [1, 2, 3, 4, 5, 6], ids
    ok(client.post("/backfills/media-duration", json={"items": [{"record_id": 1, "duration": 2}]}))
    tier = {"max_clips": 50, "max_height": 2160, "monthly_render_seconds": 1e5}
    ok(client.put("/tiers/pro", json=tier))
    clips = [{"media_id": 5, "start": 0, "end": 1}, {"media_id": 1, "start": 0.5, "end": 2}]
    for n, status in enumerate(["queued", "draft", "queued", "queued", "queued"], start=1):
        project = {"name": f"p{n}", "owner": f"owner{n % 2}", "clips": clips, "status": status}
        if n == 1:
            project |= {"tier": "pro", "intro_media_id": 2, "height": 720, "fps": 30}
        ok(client.post("/projects", json=project))
    ok(client.put("/projects/3/status", json={"status": "compiling"}))
    ok(client.put("/projects/4/status", json={"status": "compiling"}))
    ok(client.put("/projects/4/status", json={"status": "failed", "reason": "boom"}))
    ok(
        client.post(
            "/backfills/media-duration/failures",
            json={"items": [{"record_id": 2, "error": "unreadable"}]},
        )
    )


@pytest.fixture(scope="module")
def fuzz_app(database_url: str) -> Iterator[FastAPI]:
    """The app over a freshly seeded session database, with an admin token preset."""
    from api.core.config import Settings
    from api.main import create_app
    from api.services.tokens import create_token

    _reset(database_url)
    token = create_token(name="fuzz-admin", role="admin", database_url=database_url)
    app = create_app(Settings(DATABASE_URL=database_url))
    with TestClient(app, base_url="http://testserver/api/v1") as client:
        client.headers["Authorization"] = f"Bearer {token}"
        _seed(client)
    app.state.fuzz_token = token
    yield app
    _reset(database_url)


def _load_schema() -> OpenApiSchema:
    """The OpenAPI document the app serves. It does not depend on the database, so it is
    read from an app over an unused in-memory URL at import time; requests go to `fuzz_app`.
    (schemathesis' lazy `from_fixture` would run the 27 operations as subtests of one test,
    on one xdist worker; parametrized, they are 27 tests that xdist spreads.)"""
    from api.core.config import Settings
    from api.main import create_app

    config = SchemathesisConfig.from_dict(
        {
            "seed": 20261123,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
        }
    )
    app = create_app(Settings(DATABASE_URL="sqlite://"))
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=config)


schema = _load_schema()

#: Fields and path parameters that name a record, a project or a media id.
ID_NAMES = frozenset(
    {
        "record_id",
        "project_id",
        "media_id",
        "intro_media_id",
        "outro_media_id",
        "transition_media_id",
    }
)
#: Ids are folded into 1..ID_SPAN, so most requests name a seeded row (and reach the writes)
#: instead of a random one (404 or "record not found"); 7 and 8 exist only once created here.
ID_SPAN = 8


def _fold(value: Any, key: str | None = None) -> Any:
    """Fold valid ids into the seeded range; keep every invalid value (negative cases) as is."""
    if isinstance(value, dict):
        return {k: _fold(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_fold(v, key) for v in value]
    if key in ID_NAMES and type(value) is int and 1 <= value < 2**63:
        return 1 + (value - 1) % ID_SPAN
    if key == "expected_revision" and type(value) is int and 0 <= value < 2**63:
        return value % 4
    return value


@schema.hook
def map_body(context: Any, body: Any) -> Any:
    return _fold(body)


@schema.hook
def map_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> Any:
    return _fold(path_parameters)


#: Rules that span several fields or parameters, which JSON Schema does not express: a
#: schema-valid request may rightly get a 422 for these, and only for these.
CROSS_FIELD_422 = "value_error"
#: schemathesis compares integer bounds as doubles: 2**63 - 1 rounds up to 2**63, so it takes
#: e.g. 2**63 + 190 for a valid 64-bit id. Python compares exactly and refuses it, rightly.
INT64_MAX = str(2**63 - 1)


def schema_valid_requests_accepted(ctx: Any, response: Any, case: schemathesis.Case) -> None:
    """schemathesis' `positive_data_acceptance`, minus cross-field rules: a schema-valid
    request may be refused with 422 only by a model validator (`value_error`, e.g. hash
    length per algorithm, clip end > start) or a route's cross-parameter check (a plain
    message, e.g. shard_index < shard_count). Any other 422 means a constraint is missing
    from the OpenAPI document."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    if response.status_code != 422:
        return
    detail = response.json()["detail"]
    if isinstance(detail, str):
        return
    undocumented = [
        issue
        for issue in detail
        if issue["type"] != CROSS_FIELD_422 and not issue["msg"].endswith(INT64_MAX)
    ]
    assert not undocumented, f"schema-valid request refused: {undocumented}"


@pytest.mark.slow  # ~43 s of CPU: 27 operations, each its coverage cases and MAX_EXAMPLES more
@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
def test_every_endpoint_survives_fuzzing(case: schemathesis.Case, fuzz_app: FastAPI) -> None:
    # A negative case that drops the Authorization header must go without it: adding the
    # token back would turn it into a valid request, and its acceptance into a false failure.
    negative = case.meta is not None and not case.meta.generation.mode.is_positive
    dropped = negative and "Authorization" not in (case.headers or {})
    case.call_and_validate(
        app=fuzz_app,
        headers={} if dropped else {"Authorization": f"Bearer {fuzz_app.state.fuzz_token}"},
        excluded_checks=[positive_data_acceptance],
        additional_checks=[schema_valid_requests_accepted],
    )
