"""`backfill media import`: NDJSON through the API into a real database, idempotent."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from flows.client import BackfillClient
from ops.cli import app
from ops.importer import import_media
from tests.conftest import LiveApi


def ndjson(n: int, start: int = 0) -> str:
    return "".join(
        json.dumps({"uri": f"bulk/{i}.wav", "media_type": "audio", "size_bytes": i}) + "\n"
        for i in range(start, start + n)
    )


def rows(api: LiveApi, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(api.database_url.removeprefix("sqlite:///")) as conn:
        return conn.execute(sql).fetchall()


def summary(stdout: str) -> dict[str, str]:
    """The summary table's `name value` rows."""
    found = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 2:
            found[cells[0]] = cells[1]
    return found


def test_import_then_reimport_registers_each_record_once(
    client_env: LiveApi, tmp_path: Path
) -> None:
    source = tmp_path / "corpus.ndjson"
    source.write_text(ndjson(2500))  # three batches of at most 1,000
    runner = CliRunner()

    first = runner.invoke(app, ["media", "import", str(source)])

    assert first.exit_code == 0, first.output
    assert summary(first.stdout) | {"records/s": "-"} == {
        "records": "2500",
        "created": "2500",
        "already there": "0",
        "rejected": "0",
        "malformed lines": "0",
        "records/s": "-",
    }
    assert rows(client_env, "SELECT COUNT(*), COUNT(DISTINCT uri), SUM(size_bytes) FROM media") == [
        (2500, 2500, sum(range(2500)))
    ]
    assert rows(client_env, "SELECT COUNT(*), SUM(applied) FROM audit WHERE kind = 'media'") == [
        (3, 2500)
    ]

    again = runner.invoke(app, ["media", "import", str(source)])

    assert again.exit_code == 0, again.output
    table = summary(again.stdout)
    assert (table["created"], table["already there"]) == ("0", "2500")
    assert rows(client_env, "SELECT COUNT(*) FROM media") == [(2500,)]


def test_import_from_stdin_adds_only_new_records(client_env: LiveApi) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["media", "import", "-"], input=ndjson(10)).exit_code == 0

    result = runner.invoke(app, ["media", "import", "-"], input=ndjson(15, start=5))

    assert result.exit_code == 0, result.output
    table = summary(result.stdout)
    assert (table["records"], table["created"], table["already there"]) == ("15", "10", "5")
    assert rows(client_env, "SELECT COUNT(*) FROM media") == [(20,)]


def test_malformed_lines_are_reported_by_number_and_the_rest_imported(
    client_env: LiveApi, tmp_path: Path
) -> None:
    source = tmp_path / "mixed.ndjson"
    good = ndjson(3).splitlines()
    source.write_text(
        "\n".join(
            [
                good[0],
                "{not json",
                good[1],
                json.dumps({"uri": "/abs/x.wav", "media_type": "audio"}),
                "",
                json.dumps({"uri": "y.wav", "media_type": "audio", "colour": "red"}),
                good[2],
            ]
        )
        + "\n"
    )

    result = CliRunner().invoke(app, ["media", "import", str(source)])

    assert result.exit_code == 1
    assert "line 2: " in result.stderr and "Invalid JSON" in result.stderr
    assert "line 4: " in result.stderr and "relative to the media root" in result.stderr
    assert "line 6: colour: Extra inputs are not permitted" in result.stderr
    table = summary(result.stdout)
    assert (table["created"], table["malformed lines"]) == ("3", "3")
    assert sorted(r[0] for r in rows(client_env, "SELECT uri FROM media")) == [
        "bulk/0.wav",
        "bulk/1.wav",
        "bulk/2.wav",
    ]


def test_missing_file_is_a_usage_error(client_env: LiveApi, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["media", "import", str(tmp_path / "nope.ndjson")])

    assert result.exit_code == 2
    assert "is not a file" in result.stderr


class LoseFirstAnswers(httpx.BaseTransport):
    """Delivers each of the first `n` POSTs to the server, then loses its answer."""

    def __init__(self, n: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.left = n
        self.keys: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST":
            self.keys.append(request.headers["Idempotency-Key"])
            if self.left > 0:
                self.left -= 1
                response.read()
                raise httpx.ReadError("connection lost after the server answered", request=request)
        return response


@pytest.mark.parametrize("in_flight", [1, 2])
def test_a_retried_batch_is_applied_once(client_env: LiveApi, in_flight: int) -> None:
    transport = LoseFirstAnswers(2)
    with BackfillClient(
        client_env.url, client_env.admin_token, transport=transport, sleep=lambda _s: None
    ) as client:
        report = import_media(
            client, ndjson(2500).splitlines(), batch_size=1000, in_flight=in_flight
        )

    assert (report.sent, report.created, report.existing) == (2500, 2500, 0)
    assert len(transport.keys) == 5 and len(set(transport.keys)) == 3  # 2 resent, same keys
    assert rows(client_env, "SELECT COUNT(*) FROM media") == [(2500,)]
    assert rows(client_env, "SELECT COUNT(*) FROM audit WHERE kind = 'media'") == [(3,)]
