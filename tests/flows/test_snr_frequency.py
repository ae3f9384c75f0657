"""snr-frequency: the flow's compute on real files, then the version-0 and snr-frequency
flows end to end on the sample corpus against a real API (under Prefect's test server),
checked against the corpus manifest."""

from __future__ import annotations

import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from api.schemas import BackfillKind, MediaIn, PendingItem, SnrFrequencyResult
from flows.client import BackfillClient
from flows.compute.audio import warm_up
from flows.settings import ClientSettings
from flows.snr_frequency import snr_frequency
from flows.snr_spec import SNR_FREQUENCY
from flows.spec import BackfillParams, ItemOutcome, Job, run_item
from flows.version_migration import version_migration
from ops.cli_corpus import sample_corpus
from ops.corpus import load_manifest, make_sample_corpus, write_tone, write_video
from tests.conftest import LiveApi

KIND = BackfillKind.SNR_FREQUENCY


def analyse_one(root: Path, uri: str) -> ItemOutcome:
    """The flow's per-record work (opener + compute), as a worker process runs it."""
    settings = ClientSettings(API_TOKEN="t", MEDIA_ROOT=root)
    item = PendingItem(record_id=5, revision=1, uri=uri, media_type="audio")
    return run_item(SNR_FREQUENCY, Job(item, BackfillParams(), settings))


def test_compute_measures_a_tone_in_noise(tmp_path: Path) -> None:
    write_tone(tmp_path / "a/tone.flac", freq=1234.5, seconds=1.0, rate=22_050, snr_db=18.0)

    outcome = analyse_one(tmp_path, "a/tone.flac")

    assert isinstance(outcome.result, SnrFrequencyResult), outcome.error
    assert outcome.result.record_id == 5
    assert outcome.result.frequency == pytest.approx(1234.5, abs=1.0)
    assert outcome.result.snr == pytest.approx(18.0, abs=1.0)


def test_compute_analyses_the_audio_track_of_a_video(tmp_path: Path) -> None:
    write_video(tmp_path / "v/tone.mp4", seconds=1.0, freq=660.0)

    outcome = analyse_one(tmp_path, "v/tone.mp4")

    assert isinstance(outcome.result, SnrFrequencyResult), outcome.error
    assert outcome.result.frequency == pytest.approx(660.0, abs=1.0)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("mute.mp4", None, "mute.mp4 has no audio track"),
        ("empty.wav", b"", "empty.wav is empty"),
        ("text.ogg", b"hello", "text.ogg is not an audio or video file (unrecognised content)"),
        ("gone.wav", "missing", "gone.wav does not exist under the media root"),
    ],
)
def test_compute_turns_a_bad_file_into_a_clear_failure(
    tmp_path: Path, name: str, content: bytes | str | None, reason: str
) -> None:
    if content is None:
        write_video(tmp_path / name, seconds=0.5, with_audio=False)
    elif isinstance(content, bytes):
        (tmp_path / name).write_bytes(content)

    outcome = analyse_one(tmp_path, name)

    assert (outcome.result, outcome.error) == (None, reason)


def test_spec_runs_on_warmed_worker_processes() -> None:
    assert SNR_FREQUENCY.executor == "process" and SNR_FREQUENCY.warmup is warm_up
    # spawned workers receive the spec by pickling (its callables by reference)
    assert pickle.loads(pickle.dumps(SNR_FREQUENCY)) == SNR_FREQUENCY


@pytest.mark.slow  # a fresh Python process
def test_a_worker_unpickles_the_spec_without_importing_prefect() -> None:
    payload = pickle.dumps((run_item, SNR_FREQUENCY))
    code = (
        "import pickle, sys; pickle.loads(sys.stdin.buffer.read()); "
        "print(sorted(m for m in ('prefect', 'sqlalchemy', 'sqlmodel') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=payload, capture_output=True, check=True, timeout=60
    )
    assert done.stdout.decode().strip() == "[]", done.stderr.decode()


# --- End to end -----------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_api_url", "quarantine_at_first_failure")
def test_snr_frequency_matches_the_corpus_manifest(client_env: LiveApi, media_root: Path) -> None:
    manifest = make_sample_corpus(media_root, audio=6, video=2, legacy=4, projects=0, corrupt=4)
    write_video(media_root / "video/mute.mp4", seconds=0.5, with_audio=False)
    registrations = [f.media_in(media_root) for f in manifest.files]
    registrations.append(MediaIn(uri="video/mute.mp4", media_type="video"))
    with BackfillClient(client_env.url, client_env.admin_token) as client:
        created = client.register_media(registrations).items
    ids = {e.uri: i.id for e, i in zip(manifest.files, created, strict=False) if i.id}
    mute_id = created[-1].id
    assert len(ids) == len(manifest.files) and mute_id is not None

    migrated = version_migration()  # legacy records become version 1, then have audio work
    assert (migrated.applied, migrated.failed) == (4, 0)
    report = snr_frequency(batch_size=4, max_failure_ratio=0.5)

    good = [f for f in manifest.files if not f.corrupt]
    corrupt = [f for f in manifest.files if f.corrupt]
    assert report.status == "completed"
    assert (report.processed, report.applied, report.failed) == (17, len(good), 5)
    with BackfillClient(client_env.url, client_env.admin_token) as client:
        records = {r.id: r for r in client.list_media().items}
        coverage = next(k for k in client.coverage().kinds if k.kind == KIND)
    for entry in good:
        record = records[ids[entry.uri]]
        assert entry.frequency is not None and record.frequency is not None
        assert record.frequency == pytest.approx(entry.frequency, abs=1.0), entry.uri
        assert record.snr is not None, entry.uri
        if entry.snr is not None:  # videos carry a clean tone: no SNR in the manifest
            assert record.snr == pytest.approx(entry.snr, abs=1.0), entry.uri
    db = client_env.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        failures = dict(
            conn.execute(
                "SELECT record_id, last_error FROM backfill_failures WHERE kind = ?", (KIND.value,)
            ).fetchall()
        )
    # Each reason names the file by its uri, relative to the media root.
    assert failures == {
        ids[corrupt[0].uri]: "corrupt/00-empty.wav is empty",
        ids[corrupt[1].uri]: "corrupt/01-not-a-video.mp4 is not an audio or video file "
        "(unrecognised content)",
        ids[corrupt[2].uri]: "corrupt/02-truncated.flac is corrupt, truncated or not a media "
        "file (flac by its content; FFmpeg: Invalid data found when processing input)",
        ids[corrupt[3].uri]: "corrupt/03-noise.ogg is not an audio or video file "
        "(unrecognised content)",
        mute_id: "video/mute.mp4 has no audio track",
    }
    assert (coverage.done, coverage.failed, coverage.quarantined) == (len(good), 5, 5)

    again = snr_frequency()
    assert (again.status, again.processed) == ("completed", 0)


# --- The sample-corpus command (registered on `backfill` by ops/cli.py) -------------------


def corpus_cli() -> typer.Typer:
    app = typer.Typer()
    app.command("sample-corpus")(sample_corpus)
    app.command("noop")(lambda: None)  # a second command, so the name is required as in `backfill`
    return app


def test_sample_corpus_command_writes_the_corpus_and_manifest(tmp_path: Path) -> None:
    target = tmp_path / "corpus"
    args = ["sample-corpus", str(target), "--audio", "2", "--video", "1", "--legacy", "1"]

    done = CliRunner().invoke(corpus_cli(), [*args, "--corrupt", "1", "--projects", "1"])

    assert done.exit_code == 0, done.output
    manifest = load_manifest(target)
    assert (len(manifest.files), len(manifest.projects)) == (5, 1)
    assert f"ground truth: {target / 'manifest.json'}" in done.stdout


def test_sample_corpus_command_refuses_bad_counts(tmp_path: Path) -> None:
    runner = CliRunner()

    no_video = runner.invoke(corpus_cli(), ["sample-corpus", str(tmp_path), "--video", "0"])
    negative = runner.invoke(corpus_cli(), ["sample-corpus", str(tmp_path), "--audio", "-1"])

    assert no_video.exit_code == 2 and "projects need at least one video" in no_video.output
    assert negative.exit_code == 2
