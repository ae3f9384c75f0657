"""`backfill` commands: exit codes, one-line errors, and real work against a live API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.schemas import BackfillKind, MediaIn
from flows.client import BackfillClient
from flows.settings import PREFECT_STARTUP_TIMEOUT_ENV, ConfigError, prefect_startup_timeout
from ops.cli import app
from tests.conftest import ROOT, LiveApi
from tests.flows.conftest import write_wav


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    # `run` sets these with setdefault; pre-set them so the test process gets them back.
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    monkeypatch.setenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    startup = os.environ.get(PREFECT_STARTUP_TIMEOUT_ENV, "90")
    monkeypatch.setenv(PREFECT_STARTUP_TIMEOUT_ENV, startup)
    return CliRunner()


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_status_prints_coverage(cli: CliRunner, client_env: LiveApi) -> None:
    result = cli.invoke(app, ["status"])

    assert result.exit_code == 0, result.output
    for kind in BackfillKind:
        assert kind.value in result.stdout


def test_status_table_into_a_pipe_keeps_every_digit(capsys: pytest.CaptureFixture[str]) -> None:
    """Into a pipe rich lays tables out on 80 columns; a million records' counts would print
    as `99000…`. `status` prints its table at the table's own width there."""
    from rich.table import Table

    from ops.cli import _print_whole

    table = Table(title="coverage")
    for name in ("kind", "total", "done", "pending", "failed", "quarantined", "done %"):
        table.add_column(name)
    table.add_column("by version")
    table.add_row(
        "file-hashing (sha256)",
        "1000000",
        "990000",
        "10000",
        "0",
        "0",
        "99.0",
        "v1:980000 v2:10000",
    )

    _print_whole(table)

    row = next(line for line in capsys.readouterr().out.splitlines() if "file-hashing" in line)
    cells = [cell.strip() for cell in row.strip("│").split("│")]
    assert cells == ["file-hashing (sha256)", "1000000", "990000", "10000", "0", "0", "99.0"] + [
        "v1:980000 v2:10000"
    ]


def test_status_with_a_bad_token_is_a_config_error(
    cli: CliRunner, client_env: LiveApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKFILL_API_TOKEN", "cbk_not-a-real-token")

    result = cli.invoke(app, ["status"])

    assert result.exit_code == 2
    assert "401 Unauthorized" in one_line_error(result.stderr)


def test_status_without_an_api_fails(cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKFILL_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("BACKFILL_API_TOKEN", "t")

    result = cli.invoke(app, ["status"])

    assert result.exit_code == 1
    assert "cannot reach the API at http://127.0.0.1:9" in one_line_error(result.stderr)


def test_register_walks_a_folder_and_skips_what_is_not_media(
    cli: CliRunner, client_env: LiveApi, media_root: Path
) -> None:
    for i in range(3):
        write_wav(media_root / f"talks/{i}.wav", frames=800)
    (media_root / "talks/notes.txt").write_text("not media")
    (media_root / "talks/escape.wav").symlink_to("/etc/hostname")
    (media_root / "talks/.hidden.wav").write_bytes(b"")

    result = cli.invoke(app, ["media", "register", str(media_root / "talks")])

    assert result.exit_code == 0, result.output
    assert "skipped talks/notes.txt" in result.stderr
    assert "skipped talks/escape.wav" in result.stderr
    with BackfillClient(client_env.url, client_env.admin_token) as client:
        page = client.list_media()
    assert sorted((m.uri, m.media_type) for m in page.items) == [
        (f"talks/{i}.wav", "audio") for i in range(3)
    ]

    again = cli.invoke(app, ["media", "register", str(media_root)])
    assert again.exit_code == 0
    assert [line.split("│")[1:3] for line in again.stdout.splitlines() if "existing" in line]


def test_register_outside_the_media_root_is_a_config_error(
    cli: CliRunner, client_env: LiveApi, tmp_path: Path
) -> None:
    result = cli.invoke(app, ["media", "register", str(tmp_path)])

    assert result.exit_code == 2
    assert "is not under BACKFILL_MEDIA_ROOT" in one_line_error(result.stderr)


def test_run_without_a_token_is_one_line_and_exit_2(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("BACKFILL_API_TOKEN", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env

    result = cli.invoke(app, ["run", "file-hashing"])

    assert result.exit_code == 2
    assert "BACKFILL_API_TOKEN is not set" in one_line_error(result.stderr)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "file-hashing", "-p", "algorithm=md6"], "invalid parameters for file-hashing"),
        (["run", "file-hashing", "-p", "colour=blue"], "invalid parameters for file-hashing"),
        (["run", "file-hashing", "-p", "nonsense"], "--param takes KEY=VALUE"),
    ],
)
def test_run_usage_errors_exit_2(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str], message: str
) -> None:
    monkeypatch.setenv("BACKFILL_API_TOKEN", "t")
    monkeypatch.setenv("BACKFILL_MEDIA_ROOT", str(tmp_path))

    result = cli.invoke(app, args)

    assert result.exit_code == 2
    assert message in one_line_error(result.stderr)


def test_run_of_a_kind_without_a_flow_exits_2(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import flows.registry

    monkeypatch.setenv("BACKFILL_API_TOKEN", "t")
    monkeypatch.setenv("BACKFILL_MEDIA_ROOT", str(tmp_path))
    registered = dict(flows.registry.FLOWS)
    del registered[BackfillKind.SNR_FREQUENCY]
    monkeypatch.setattr(flows.registry, "FLOWS", registered)

    result = cli.invoke(app, ["run", "snr-frequency"])

    assert result.exit_code == 2
    assert "no flow for snr-frequency yet" in one_line_error(result.stderr)


def test_run_with_a_missing_media_root_exits_2(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BACKFILL_API_TOKEN", "t")
    monkeypatch.setenv("BACKFILL_MEDIA_ROOT", str(tmp_path / "nowhere"))

    result = cli.invoke(app, ["run", "media-duration"])

    assert result.exit_code == 2
    assert "nowhere is not a directory" in one_line_error(result.stderr)


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_api_url")
def test_run_with_a_reader_token_exits_2(
    cli: CliRunner, client_env: LiveApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKFILL_API_TOKEN", client_env.reader_token)

    result = cli.invoke(app, ["run", "media-duration"])

    assert result.exit_code == 2
    assert "403 Forbidden" in one_line_error(result.stderr)


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_api_url")
def test_run_with_a_shard_outside_the_count_exits_2(cli: CliRunner, client_env: LiveApi) -> None:
    result = cli.invoke(app, ["run", "media-duration", "--shard-index", "2", "--shard-count", "2"])

    assert result.exit_code == 2
    assert "shard_index must be less than shard_count" in one_line_error(result.stderr)


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_api_url")
def test_run_fills_durations_and_prints_the_summary(
    cli: CliRunner, client_env: LiveApi, media_root: Path
) -> None:
    for i in range(4):
        write_wav(media_root / f"a/{i}.wav", frames=1000 * (i + 1), rate=8000)
    assert cli.invoke(app, ["media", "register", str(media_root)]).exit_code == 0

    result = cli.invoke(app, ["run", "media-duration", "--batch-size", "2"])

    assert result.exit_code == 0, result.output
    assert "media-duration: completed" in result.stdout
    with BackfillClient(client_env.url, client_env.admin_token) as client:
        durations = sorted(m.duration or 0 for m in client.list_media().items)
    assert durations == [0.125, 0.25, 0.375, 0.5]

    (media_root / "a/broken.wav").write_bytes(b"broken")
    with BackfillClient(client_env.url, client_env.admin_token) as client:
        client.register_media([MediaIn(uri="a/broken.wav", media_type="audio")])

    failed = cli.invoke(app, ["run", "media-duration", "--max-failure-ratio", "0"])

    assert failed.exit_code == 1
    assert "media-duration: failed" in failed.stdout
    assert "reason" in failed.stdout and "not an audio or video file" in failed.stdout


def test_a_local_run_sends_no_heartbeats_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import get_current_settings, temporary_settings

    from ops.cli import _local_run_settings

    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", raising=False)
    with temporary_settings(updates={"flows.heartbeat_frequency": 60}):
        with _local_run_settings():
            assert get_current_settings().flows.heartbeat_frequency is None
        assert get_current_settings().flows.heartbeat_frequency == 60

        monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "60")
        with _local_run_settings():
            assert get_current_settings().flows.heartbeat_frequency == 60


@pytest.mark.slow  # ~75 s: the temporary server's start-up is waited out
def test_temporary_prefect_server_that_does_not_start_is_one_line(tmp_path: Path) -> None:
    """No PREFECT_API_URL: `run` starts Prefect's temporary server; if it is not up within
    the start-up timeout, one plain line and exit 1 (here 1 s against a fresh PREFECT_HOME,
    whose migrations alone take longer)."""
    (tmp_path / "media").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BACKFILL_"))}
    env |= {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        PREFECT_STARTUP_TIMEOUT_ENV: "1",
        "BACKFILL_API_TOKEN": "not-used",
        "BACKFILL_MEDIA_ROOT": str(tmp_path / "media"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "ops.cli", "run", "file-hashing"],
        cwd=tmp_path,
        env=env | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode == 1, done.stderr
    assert one_line_error(done.stderr) == (
        "error: the temporary Prefect server did not start within 1s "
        "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS); raise it, or set PREFECT_API_URL "
        "to a running Prefect server"
    )


def test_prefect_startup_timeout_defaults_to_two_minutes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PREFECT_STARTUP_TIMEOUT_ENV, raising=False)
    assert prefect_startup_timeout() == 120
    monkeypatch.setenv(PREFECT_STARTUP_TIMEOUT_ENV, "300")
    assert prefect_startup_timeout() == 300
    monkeypatch.setenv(PREFECT_STARTUP_TIMEOUT_ENV, "0.5")
    with pytest.raises(ConfigError, match="must be a whole number of seconds, not '0.5'"):
        prefect_startup_timeout()
