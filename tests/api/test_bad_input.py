"""The bad-input catalogue: every hostile or malformed request gets a clear 4xx that says what
is wrong, never a 5xx, and writes nothing (every table is compared before and after).

Runs on SQLite and, with BACKFILL_TEST_DATABASE_URL, on PostgreSQL, where NUL bytes, lone
surrogates and out-of-range integers would otherwise surface as database errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.api.utils import register
from tests.conftest import TABLES

MiB = 1024 * 1024
BIG = 2**63  # one past the largest BIGINT
JSON = {"content-type": "application/json"}


@dataclass
class Seeded:
    """Rows the bad requests aim at, so a request that slipped through would change them."""

    media: list[int]
    legacy: int
    project: int


@pytest.fixture
def seeded(client: httpx.Client) -> Seeded:
    media = register(client, 3, prefix="seed")
    legacy = client.post("/media", json={"items": [{"uri": "/old/a.wav", "schema_version": 0}]})
    project = client.post(
        "/projects",
        json={"name": "p", "owner": "o", "clips": [{"media_id": media[0], "start": 0, "end": 1}]},
    )
    assert legacy.status_code == 200 and project.status_code == 201, (legacy.text, project.text)
    return Seeded(media=media, legacy=legacy.json()["items"][0]["id"], project=project.json()["id"])


def snapshot(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table: "nothing written" means this is equal before and after."""
    from api.core.db import engine_for

    with engine_for(database_url).connect() as conn:
        return {
            table: [tuple(row) for row in conn.execute(text(f"SELECT * FROM {table} ORDER BY 1"))]
            for table in (*TABLES, "tiers")
        }


@dataclass
class Bad:
    """One bad request: what is sent, the status expected, and words the answer must contain."""

    id: str
    method: str
    path: str
    status: int
    says: tuple[str, ...]
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] | None = None

    def send(self, client: httpx.Client, seeded: Seeded) -> httpx.Response:
        path = self.path.format(m=seeded.media[0], legacy=seeded.legacy, p=seeded.project)
        kwargs: dict[str, Any] = {"headers": self.headers, "params": self.params}
        if self.content is not None:
            kwargs["content"] = self.content
            kwargs["headers"] = JSON | self.headers
        elif self.json is not None:
            kwargs["json"] = _fill(self.json, seeded)
        return client.request(self.method, path, **kwargs)


def _fill(value: Any, seeded: Seeded) -> Any:
    """`"$m"` in a body stands for the first seeded media id, `"$p"` for the project."""
    if value == "$m":
        return seeded.media[0]
    if value == "$legacy":
        return seeded.legacy
    if value == "$p":
        return seeded.project
    if isinstance(value, dict):
        return {k: _fill(v, seeded) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, seeded) for v in value]
    return value


def duration(**item: Any) -> dict[str, Any]:
    return {"items": [{"record_id": "$m", "duration": 1.5} | item]}


def failure(**item: Any) -> dict[str, Any]:
    return {"items": [{"record_id": "$m", "error": "unreadable"} | item]}


def media(**item: Any) -> dict[str, Any]:
    return {"items": [{"uri": "new/x.wav", "media_type": "audio"} | item]}


def version0(**item: Any) -> dict[str, Any]:
    base = {"record_id": "$legacy", "expected_revision": 1, "uri": "new/v0.wav"}
    return {"items": [base | {"media_type": "audio", "size_bytes": 10} | item]}


def compiled(**item: Any) -> dict[str, Any]:
    base = {"project_id": "$p", "output_uri": "out/p.mp4", "thumbnail_uri": "out/p.jpg"}
    rest = {"duration": 1.0, "hash": "a" * 64, "size_bytes": 10, "render_seconds": 1.0}
    return {"items": [base | rest | item]}


def project(**fields: Any) -> dict[str, Any]:
    return {"name": "q", "owner": "o", "clips": [{"media_id": "$m", "start": 0, "end": 1}]} | fields


def raw_duration(value: str) -> bytes:
    """A duration batch with `value` spliced in as a raw JSON token."""
    return b'{"items": [{"record_id": 1, "duration": ' + value.encode() + b"}]}"


DURATION = "/backfills/media-duration"
SNR = "/backfills/snr-frequency"
FAILURES = "/backfills/media-duration/failures"
TIER = {"max_clips": 5, "max_height": 720, "monthly_render_seconds": 60}

CATALOGUE = [
    # --- size limits -------------------------------------------------------------------------
    Bad("1001-items", "POST", DURATION, 422, ("at most 1000 items", "items"),
        json={"items": [{"record_id": i, "duration": 1.0} for i in range(1, 1002)]}),
    Bad("1001-media", "POST", "/media", 422, ("at most 1000 items",),
        json={"items": [{"uri": f"m/{i}.wav", "media_type": "audio"} for i in range(1001)]}),
    Bad("1001-clips", "POST", "/projects", 422, ("at most 1000 items", "clips"),
        json=project(clips=[{"media_id": "$m", "start": 0, "end": 1}] * 1001)),
    Bad("body-over-16MiB", "POST", DURATION, 413, ("larger than 16777216 bytes",),
        content=b'{"items": [], "pad": "' + b"x" * (16 * MiB) + b'"}'),
    Bad("uri-1MB", "POST", "/media", 422, ("at most 4096 characters", "uri"),
        json=media(uri="a/" + "x" * MiB)),
    Bad("error-10MB", "POST", FAILURES, 422, ("at most 4000 characters", "error"),
        json=failure(error="e" * (10 * MiB))),
    Bad("name-201", "POST", "/projects", 422, ("at most 200 characters", "name"),
        json=project(name="n" * 201)),
    Bad("idempotency-key-201", "POST", DURATION, 422, ("at most 200 characters", "Idempotency-Key"),
        json=duration(), headers={"Idempotency-Key": "k" * 201}),
    # --- non-finite numbers: JSON tokens Python's parser accepts, and strings --------------
    Bad("NaN-token", "POST", DURATION, 422, ("finite number", "duration"), content=raw_duration("NaN")),
    Bad("Infinity-token", "POST", DURATION, 422, ("finite number",), content=raw_duration("Infinity")),
    Bad("-Infinity-token", "POST", DURATION, 422, ("finite number",), content=raw_duration("-Infinity")),
    Bad("1e999-overflows", "POST", DURATION, 422, ("finite number",), content=raw_duration("1e999")),
    Bad("NaN-string", "POST", DURATION, 422, ("valid number", "duration"), json=duration(duration="NaN")),
    Bad("Infinity-string", "POST", DURATION, 422, ("valid number",), json=duration(duration="Infinity")),
    Bad("snr-NaN", "POST", SNR, 422, ("finite number", "snr"),
        content=b'{"items": [{"record_id": 1, "snr": NaN, "frequency": 440}]}'),
    Bad("clip-end-Infinity", "POST", "/projects", 422, ("finite number", "end"),
        content=b'{"name": "q", "owner": "o", "clips": [{"media_id": 1, "start": 0, "end": Infinity}]}'),
    Bad("tier-seconds-NaN", "PUT", "/tiers/pro", 422, ("finite number", "monthly_render_seconds"),
        content=b'{"max_clips": 5, "max_height": 720, "monthly_render_seconds": NaN}'),
    Bad("render-seconds-Infinity", "POST", "/backfills/clip-compile", 422, ("valid number",),
        json=compiled(render_seconds="Infinity")),
    # --- wrong types (no silent coercion of booleans or numeric strings) ---------------------
    Bad("items-string", "POST", DURATION, 422, ("valid list",), json={"items": "all"}),
    Bad("items-object", "POST", DURATION, 422, ("valid list",), json={"items": {"record_id": 1}}),
    Bad("item-number", "POST", DURATION, 422, ("valid dictionary",), json={"items": [1]}),
    Bad("body-array", "POST", DURATION, 422, ("valid dictionary",), json=[{"record_id": 1}]),
    Bad("body-null", "POST", DURATION, 422, ("body",), content=b"null"),
    Bad("id-string", "POST", DURATION, 422, ("valid integer", "record_id"), json=duration(record_id="1")),
    Bad("id-bool", "POST", DURATION, 422, ("valid integer", "record_id"), json=duration(record_id=True)),
    Bad("id-fraction", "POST", DURATION, 422, ("fractional part",), json=duration(record_id=1.5)),
    Bad("duration-string", "POST", DURATION, 422, ("valid number",), json=duration(duration="1.5")),
    Bad("duration-bool", "POST", DURATION, 422, ("valid number",), json=duration(duration=True)),
    Bad("dry-run-string", "POST", DURATION, 422, ("valid boolean", "dry_run"),
        json=duration() | {"dry_run": "yes"}),
    Bad("dry-run-number", "POST", DURATION, 422, ("valid boolean",), json=duration() | {"dry_run": 1}),
    Bad("uri-number", "POST", "/media", 422, ("valid string", "uri"), json=media(uri=5)),
    Bad("media-type-enum", "POST", "/media", 422, ("'audio' or 'video'",), json=media(media_type="image")),
    Bad("algorithm-enum", "POST", "/backfills/file-hashing", 422, ("'md5'", "algorithm"),
        json={"items": [{"record_id": "$m", "hash": "a" * 32, "algorithm": "crc32"}]}),
    Bad("size-bytes-string", "POST", "/media", 422, ("valid integer", "size_bytes"),
        json=media(size_bytes="10")),
    Bad("max-clips-bool", "PUT", "/tiers/pro", 422, ("valid integer", "max_clips"),
        json=TIER | {"max_clips": True}),
    Bad("status-enum", "PUT", "/projects/{p}/status", 422, ("status",), json={"status": "done"}),
    # --- unknown fields and parameters ---------------------------------------------------------
    Bad("item-unknown-field", "POST", DURATION, 422, ("Extra inputs are not permitted", "durations"),
        json=duration(durations=2.0)),
    Bad("batch-unknown-field", "POST", DURATION, 422, ("Extra inputs", "dryrun"),
        json=duration() | {"dryrun": True}),
    Bad("project-unknown-field", "POST", "/projects", 422, ("Extra inputs", "colour"),
        json=project(colour="red")),
    Bad("tier-unknown-field", "PUT", "/tiers/pro", 422, ("Extra inputs", "max_width"),
        json=TIER | {"max_width": 10}),
    Bad("unknown-query", "GET", "/media", 422, ("Unknown query parameter: limt",), params={"limt": 5}),
    # --- NUL bytes -------------------------------------------------------------------------
    Bad("nul-uri", "POST", "/media", 422, ("NUL",), json=media(uri="a\x00b.wav")),
    Bad("nul-uri-legacy", "POST", "/media", 422, ("NUL",), json=media(uri="/old/\x00.wav", schema_version=0)),
    Bad("nul-uri-url", "POST", "/media", 422, ("NUL",), json=media(uri="https://h/a\x00.wav")),
    Bad("nul-uri-version0", "POST", "/backfills/version-0", 422, ("NUL",), json=version0(uri="v\x00.wav")),
    Bad("nul-output-uri", "POST", "/backfills/clip-compile", 422, ("NUL",),
        json=compiled(output_uri="out/\x00.mp4")),
    Bad("nul-error", "POST", FAILURES, 422, ("NUL", "error"), json=failure(error="boom\x00")),
    Bad("nul-error-clip-compile", "POST", "/backfills/clip-compile/failures", 422, ("NUL",),
        json={"items": [{"record_id": "$p", "error": "\x00"}]}),
    Bad("nul-reason", "PUT", "/projects/{p}/status", 422, ("NUL", "reason"),
        json={"status": "compiling", "reason": "r\x00"}),
    Bad("nul-name", "POST", "/projects", 422, ("pattern", "name"), json=project(name="p\x00")),
    Bad("nul-owner", "POST", "/projects", 422, ("pattern", "owner"), json=project(owner="\x00")),
    Bad("nul-tier-path", "PUT", "/tiers/a%00b", 422, ("pattern", "name"), json=TIER),
    Bad("nul-idempotency-key", "POST", DURATION, 422, ("pattern", "Idempotency-Key"),
        json=duration(), headers={"Idempotency-Key": "k\x00"}),
    Bad("nul-flow-run-id", "POST", DURATION, 422, ("pattern", "X-Prefect-Flow-Run-Id"),
        json=duration(), headers={"X-Prefect-Flow-Run-Id": "\x00"}),
    # --- path traversal ------------------------------------------------------------------------
    Bad("dotdot", "POST", "/media", 422, ("normalised relative path",), json=media(uri="../x.wav")),
    Bad("inner-dotdot", "POST", "/media", 422, ("normalised relative path",),
        json=media(uri="a/../../x.wav")),
    Bad("dot", "POST", "/media", 422, ("normalised relative path",), json=media(uri="./x.wav")),
    Bad("empty-part", "POST", "/media", 422, ("normalised relative path",), json=media(uri="a//x.wav")),
    Bad("absolute-v1", "POST", "/media", 422, ("relative to the media root",),
        json=media(uri="/etc/passwd")),
    Bad("backslash", "POST", "/media", 422, ("backslash",), json=media(uri="..\\..\\x.wav")),
    Bad("dotdot-version0", "POST", "/backfills/version-0", 422, ("normalised relative path",),
        json=version0(uri="../escape.wav")),
    Bad("absolute-output", "POST", "/backfills/clip-compile", 422, ("relative to the media root",),
        json=compiled(output_uri="/tmp/out.mp4")),
    Bad("dotdot-thumbnail", "POST", "/backfills/clip-compile", 422, ("normalised relative path",),
        json=compiled(thumbnail_uri="out/../../t.jpg")),
    # --- encodings: lone surrogates, bytes that are not UTF-8 ---------------------------------
    Bad("surrogate-uri", "POST", "/media", 422, ("unicode", "uri"),
        content=b'{"items": [{"uri": "a\\ud800.wav", "media_type": "audio"}]}'),
    Bad("surrogate-error", "POST", FAILURES, 422, ("unicode", "error"),
        content=b'{"items": [{"record_id": 1, "error": "\\udc80"}]}'),
    Bad("surrogate-key", "POST", "/media", 422, ("unicode",),
        content=b'{"items": [], "\\ud800": 1}'),
    Bad("surrogate-name", "POST", "/projects", 422, ("unicode", "name"),
        content=b'{"name": "\\udfff", "owner": "o"}'),
    Bad("not-utf8", "POST", "/media", 400, ("error parsing the body",),
        content=b'{"items": [{"uri": "a\xff.wav", "media_type": "audio"}]}'),
    Bad("undecodable-tier-path", "PUT", "/tiers/%FF%FE", 422, ("pattern", "name"), json=TIER),
    # --- malformed JSON and content types ------------------------------------------------------
    Bad("truncated-json", "POST", DURATION, 422, ("JSON decode error", "Expecting"),
        content=b'{"items": ['),
    Bad("trailing-data", "POST", DURATION, 422, ("JSON decode error", "Extra data"),
        content=b'{"items": []} {"items": []}'),
    Bad("single-quotes", "POST", DURATION, 422, ("JSON decode error",), content=b"{'items': []}"),
    Bad("empty-body", "POST", DURATION, 422, ("Field required",), content=b""),
    Bad("text-plain", "POST", DURATION, 415, ("must be application/json", "text/plain"),
        content=b'{"items": []}', headers={"content-type": "text/plain"}),
    Bad("form-encoded", "POST", "/media", 415, ("must be application/json",),
        content=b"items=1", headers={"content-type": "application/x-www-form-urlencoded"}),
    Bad("xml", "PUT", "/tiers/pro", 415, ("must be application/json",),
        content=b"<tier/>", headers={"content-type": "application/xml"}),
    # --- ids in paths, queries and bodies: negative, zero, past BIGINT, not integers ----------
    *[
        Bad(f"media-path-{raw}", "GET", f"/media/{raw}", 422, ("media_id",))
        for raw in ("0", "-1", str(BIG), str(10**30), "1e3", "abc", "%00")
    ],
    *[
        Bad(f"project-path-{raw}", "GET", f"/projects/{raw}", 422, ("project_id",))
        for raw in ("0", "-1", str(BIG), "1e3")
    ],
    Bad("status-path-big", "PUT", f"/projects/{BIG}/status", 422, ("project_id",),
        json={"status": "compiling"}),
    Bad("context-path-negative", "GET", "/projects/-5/compilation-context", 422, ("project_id",)),
    *[
        Bad(f"after-id-{raw}", "GET", "/media", 422, ("after_id",), params={"after_id": raw})
        for raw in ("-1", str(BIG), "1e3", "")
    ],
    *[
        Bad(f"limit-{raw}", "GET", "/backfills/media-duration/pending", 422, ("limit",),
            params={"limit": raw})
        for raw in ("0", "-5", "1001", str(BIG))
    ],
    Bad("shard-index-too-big", "GET", "/backfills/media-duration/pending", 422,
        ("shard_index must be less than shard_count",), params={"shard_index": 2, "shard_count": 2}),
    Bad("unknown-kind", "GET", "/backfills/media-durations/pending", 404, ("Unknown backfill kind",)),
    Bad("unknown-kind-failures", "POST", "/backfills/nope/failures", 404, ("Unknown backfill kind",),
        json=failure()),
    Bad("max-id-unknown", "GET", f"/media/{BIG - 1}", 404, ("not found",)),
    Bad("max-project-unknown", "GET", f"/projects/{BIG - 1}", 404, ("not found",)),
    *[
        Bad(f"body-id-{value}", "POST", DURATION, 422, ("record_id",), json=duration(record_id=value))
        for value in (0, -1, BIG, 10**30)
    ],
    Bad("size-bytes-past-bigint", "POST", "/media", 422, ("size_bytes", "9223372036854775807"),
        json=media(size_bytes=BIG)),
    Bad("revision-past-bigint", "POST", "/backfills/version-0", 422, ("expected_revision",),
        json=version0(expected_revision=BIG)),
    Bad("sample-rate-huge", "POST", "/backfills/version-0", 422, ("sample_rate",),
        json=version0(sample_rate=2**40)),
    Bad("clip-media-past-bigint", "POST", "/projects", 422, ("media_id",),
        json=project(clips=[{"media_id": BIG, "start": 0, "end": 1}])),
    Bad("project-id-zero", "POST", "/backfills/clip-compile", 422, ("project_id",),
        json=compiled(project_id=0)),
]  # fmt: skip


@pytest.mark.parametrize("bad", CATALOGUE, ids=[bad.id for bad in CATALOGUE])
def test_bad_input_is_a_clear_4xx_and_writes_nothing(
    client: httpx.Client, seeded: Seeded, database_url: str, bad: Bad
) -> None:
    before = snapshot(database_url)
    r = bad.send(client, seeded)
    assert r.status_code == bad.status, r.text[:2000]
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert "detail" in body and body["detail"], body
    for words in bad.says:
        assert words in r.text, (words, r.text[:2000])
    # The answer names the problem; it does not echo a huge input back.
    assert len(r.content) < 20_000
    assert snapshot(database_url) == before


def test_body_streamed_past_16MiB_without_content_length_is_413(
    client: httpx.Client, seeded: Seeded, database_url: str
) -> None:
    """A chunked upload has no Content-Length to refuse up front: the limit holds as it streams."""

    def chunks() -> Iterator[bytes]:
        yield b'{"items": [], "pad": "'
        for _ in range(17):
            yield b"x" * MiB
        yield b'"}'

    before = snapshot(database_url)
    r = client.post(DURATION, content=chunks(), headers=JSON)
    assert r.status_code == 413 and "larger than 16777216 bytes" in r.text
    assert snapshot(database_url) == before


BATCH_ROUTES = [
    "/media",
    "/backfills/media-duration",
    "/backfills/file-hashing",
    "/backfills/snr-frequency",
    "/backfills/version-0",
    "/backfills/clip-compile",
    "/backfills/media-duration/failures",
    "/backfills/clip-compile/failures",
]


@pytest.mark.parametrize("path", BATCH_ROUTES)
def test_empty_batch_is_200_with_zero_counts(
    client: httpx.Client, seeded: Seeded, database_url: str, path: str
) -> None:
    before = snapshot(database_url)
    r = client.post(path, json={"items": []})
    assert r.status_code == 200, r.text
    result = r.json()
    assert (result["applied"], result["unchanged"], result["rejected"]) == (0, 0, [])
    after = snapshot(database_url)
    # Only the audit trail grows (one row for the batch); no record changes.
    assert len(after["audit"]) == len(before["audit"]) + 1
    assert {t: rows for t, rows in after.items() if t != "audit"} == {
        t: rows for t, rows in before.items() if t != "audit"
    }


@pytest.mark.parametrize(
    ("path", "items", "field"),
    [
        (DURATION, [{"duration": 1.0}, {"duration": 2.0}], "duration"),
        (SNR, [{"snr": 10.0, "frequency": 440.0}, {"snr": 20.0, "frequency": 880.0}], "snr"),
        (
            "/backfills/file-hashing",
            [{"hash": "a" * 64, "algorithm": "sha256"}, {"hash": "b" * 64, "algorithm": "sha256"}],
            "hash",
        ),
        (FAILURES, [{"error": "first"}, {"error": "second"}], None),
    ],
    ids=["media-duration", "snr-frequency", "file-hashing", "failures"],
)
def test_duplicate_ids_in_a_batch_keep_the_first(
    client: httpx.Client, seeded: Seeded, path: str, items: list[dict[str, Any]], field: str | None
) -> None:
    rid = seeded.media[0]
    r = client.post(path, json={"items": [{"record_id": rid} | item for item in items]})
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["applied"] == 1
    assert result["rejected"] == [{"record_id": rid, "reason": "duplicate record_id in this batch"}]
    if field is not None:
        assert client.get(f"/media/{rid}").json()[field] == items[0][field]


def test_duplicate_project_ids_in_clip_compile_keep_the_first(
    client: httpx.Client, seeded: Seeded
) -> None:
    item = compiled()["items"][0] | {"project_id": seeded.project}
    r = client.post("/backfills/clip-compile", json={"items": [item, item | {"duration": 2.0}]})
    assert r.status_code == 200, r.text
    assert r.json()["applied"] == 1
    assert r.json()["rejected"] == [
        {"record_id": seeded.project, "reason": "duplicate record_id in this batch"}
    ]
    assert client.get(f"/projects/{seeded.project}").json()["status"] == "compiled"


def test_405_lists_every_method_of_the_path(client: httpx.Client) -> None:
    r = client.request("DELETE", "/media")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    r = client.request("PATCH", "/projects/1/status")
    assert r.status_code == 405 and r.headers["allow"] == "PUT"
