"""version-0: the flow's opener and compute on real legacy files, a stale revision against a
real API, then the whole flow on the sample corpus (under Prefect's test server)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prefect.logging import disable_run_logger

from api.schemas import BackfillKind, MediaIn, MediaPublic, PendingItem, Version0Result
from flows.client import BackfillClient
from flows.engine import ChunkRunner, ProgressUpdate, process_chunk
from flows.engine import progress_listener as on_progress
from flows.settings import ClientSettings
from flows.spec import BackfillParams, ItemOutcome, Job, run_item
from flows.version_migration import VERSION_0, version_migration
from ops.corpus import Manifest, ManifestFile, make_sample_corpus, write_tone
from tests.conftest import LiveApi

KIND = BackfillKind.VERSION_0


@pytest.fixture(scope="module")
def legacy_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    """A media root with the corpus's legacy files (WAV named .bin, MP4 named .dat, FLAC,
    OGG), plus bad neighbours: a file outside it, a text file, symlinks in and out."""
    base = tmp_path_factory.mktemp("legacy")
    root = base / "media"
    manifest = make_sample_corpus(root, audio=0, video=0, legacy=4, projects=0, corrupt=0)
    write_tone(base / "outside.wav", freq=440.0, seconds=0.5, rate=8000)
    (root / "notes.wav").write_text("meeting notes, not audio\n")
    (root / "folder").mkdir()
    (root / "link-out.wav").symlink_to(base / "outside.wav")
    (root / "link-in.flac").symlink_to(root / "legacy/old-02.flac")
    (base / "root-link").symlink_to(root, target_is_directory=True)
    return root, manifest


def migrate_one(
    media_root: Path, uri: str | None, *, revision: int = 3, record_id: int = 7
) -> ItemOutcome:
    """The flow's per-record work (opener + compute), as a chunk runs it."""
    settings = ClientSettings(API_TOKEN="t", MEDIA_ROOT=media_root)
    item = PendingItem(record_id=record_id, revision=revision, uri=uri, schema_version=0)
    return run_item(VERSION_0, Job(item, BackfillParams(), settings))


def expected(entry: ManifestFile, *, record_id: int = 7, revision: int = 3) -> Version0Result:
    facts = entry.model_dump(include={"uri", "media_type", "size_bytes", "sample_rate", "channels"})
    return Version0Result(record_id=record_id, expected_revision=revision, **facts)


# --- The compute function, on real files ----------------------------------------------------


@pytest.mark.parametrize("revision", [1, 42])
def test_compute_upgrades_every_kind_of_legacy_file(
    legacy_root: tuple[Path, Manifest], revision: int
) -> None:
    root, manifest = legacy_root
    legacy = [f for f in manifest.files if f.legacy]
    assert {Path(f.uri).suffix for f in legacy} == {".bin", ".dat", ".flac", ".ogg"}

    for entry in legacy:
        outcome = migrate_one(root, entry.media_in(root).uri, revision=revision)

        assert outcome.error is None, outcome.error
        assert outcome.result == expected(entry, revision=revision), entry.uri


def test_compute_types_by_content_not_by_extension(legacy_root: tuple[Path, Manifest]) -> None:
    root, _ = legacy_root

    wav_named_bin = migrate_one(root, str(root / "legacy/old-00.bin")).result
    mp4_named_dat = migrate_one(root, str(root / "legacy/old-01.dat")).result

    assert isinstance(wav_named_bin, Version0Result) and wav_named_bin.media_type == "audio"
    assert isinstance(mp4_named_dat, Version0Result) and mp4_named_dat.media_type == "video"
    assert (mp4_named_dat.sample_rate, mp4_named_dat.channels) == (44_100, 1)


def test_compute_resolves_symlinks_inside_the_root(legacy_root: tuple[Path, Manifest]) -> None:
    root, manifest = legacy_root

    outcome = migrate_one(root, str(root / "link-in.flac"))

    assert outcome.result == expected(manifest.file("legacy/old-02.flac"))


@pytest.mark.parametrize("through_link", ["record", "setting", "both"])
def test_compute_accepts_a_media_root_reached_through_a_symlink(
    legacy_root: tuple[Path, Manifest], through_link: str
) -> None:
    root, manifest = legacy_root
    link = root.parent / "root-link"
    recorded = (link if through_link in ("record", "both") else root) / "legacy/old-03.ogg"
    setting = link if through_link in ("setting", "both") else root

    outcome = migrate_one(setting, str(recorded))

    assert outcome.result == expected(manifest.file("legacy/old-03.ogg"))


def test_compute_accepts_a_relative_media_root_setting(
    legacy_root: tuple[Path, Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, manifest = legacy_root
    monkeypatch.chdir(root.parent)

    outcome = migrate_one(Path("media"), str(root / "legacy/old-00.bin"))

    assert outcome.result == expected(manifest.file("legacy/old-00.bin"))


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        # Reasons name files under the media root relative to it: readers see the ledger,
        # and the worker's own paths are none of their business.
        ("{base}/outside.wav", "{base}/outside.wav is outside the media root"),
        ("/nonexistent/x.wav", "/nonexistent/x.wav is outside the media root"),
        ("{root}/../outside.wav", "../outside.wav is outside the media root"),
        ("{root}/link-out.wav", "link-out.wav is outside the media root through a symlink"),
        ("{root}/legacy/gone.wav", "legacy/gone.wav does not exist"),
        ("{root}/notes.wav", "notes.wav is not an audio or video file (unrecognised content)"),
        ("{root}/folder", "folder is not a regular file"),
        ("C:\\media\\a.wav", "'C:\\\\media\\\\a.wav' is not a valid file path"),
        (None, "record 7 has no uri"),
    ],
    ids=[
        "outside",
        "outside-missing",
        "dotdot",
        "symlink-out",
        "missing",
        "unknown-format",
        "directory",
        "backslash",
        "no-uri",
    ],
)
def test_compute_turns_a_bad_record_into_a_clear_failure(
    legacy_root: tuple[Path, Manifest], uri: str | None, reason: str
) -> None:
    root, _ = legacy_root
    names = {"base": root.parent.resolve(), "root": root.resolve()}
    given = uri.format(**names) if uri else None

    outcome = migrate_one(root, given)

    assert outcome.result is None
    assert outcome.error == reason.format(**names)


# --- Against the real API -------------------------------------------------------------------


def api_client(api: LiveApi) -> BackfillClient:
    return BackfillClient(api.url, api.admin_token)


def register(api: LiveApi, root: Path, entries: list[ManifestFile]) -> dict[str, int]:
    """Register corpus files (legacy ones as version 0); uri in the manifest -> record id."""
    with api_client(api) as client:
        result = client.register_media([entry.media_in(root) for entry in entries])
    assert [item.status for item in result.items] == ["created"] * len(entries)
    return {
        entry.uri: item.id for entry, item in zip(entries, result.items, strict=True) if item.id
    }


def register_legacy_paths(api: LiveApi, uris: list[str]) -> list[int]:
    with api_client(api) as client:
        result = client.register_media([MediaIn(uri=u, schema_version=0) for u in uris])
    return [item.id for item in result.items if item.id is not None]


def all_records(api: LiveApi) -> dict[int, MediaPublic]:
    with api_client(api) as client:
        return {record.id: record for record in client.list_media().items}


def bump_revision(api: LiveApi, record_id: int) -> None:
    """Another writer touches a legacy record without upgrading it (no API route does that,
    so this plays the legacy scripts that still write to the database)."""
    with sqlite3.connect(api.database_url.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE media SET revision = revision + 1 WHERE id = ?", (record_id,))


def ledger(api: LiveApi, kind: BackfillKind) -> dict[int, str]:
    with sqlite3.connect(api.database_url.removeprefix("sqlite:///")) as db:
        rows = db.execute(
            "SELECT record_id, last_error FROM backfill_failures WHERE kind = ?", (kind.value,)
        ).fetchall()
    return dict(rows)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


def test_a_stale_revision_is_a_conflict_never_an_overwrite(
    live_api: LiveApi, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    root = tmp_path / "media"
    manifest = make_sample_corpus(root, audio=0, video=0, legacy=1, projects=0, corrupt=0)
    entry = manifest.files[0]
    record_id = register(live_api, root, [entry])[entry.uri]
    settings = ClientSettings(API_TOKEN="t", MEDIA_ROOT=root)
    with api_client(live_api) as client:
        runner = ChunkRunner(VERSION_0, BackfillParams(), settings, client, pool)
        [item] = client.pending(KIND).items
        bump_revision(live_api, record_id)  # changed after it was paged

        with disable_run_logger():
            stale = process_chunk.fn(runner, [item])

        assert (stale.applied, stale.rejected, stale.failed) == (0, 1, 0)
        assert stale.errors == [
            f"conflict: record is at revision {item.revision + 1}, expected {item.revision}"
        ]
        record = client.get_media(record_id)
        assert (record.schema_version, record.uri, record.media_type) == (
            0,
            str(root / entry.uri),
            None,
        )

        # The record is still pending, at its new revision: the next run upgrades it.
        [again] = client.pending(KIND).items
        assert again.revision == item.revision + 1
        with disable_run_logger():
            fresh = process_chunk.fn(runner, [again])
        assert (fresh.applied, fresh.rejected) == (1, 0)
        record = client.get_media(record_id)
    assert (record.schema_version, record.uri, record.size_bytes) == (
        1,
        entry.uri,
        entry.size_bytes,
    )


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_api_url", "quarantine_at_first_failure")
def test_version_0_migrates_the_sample_corpus(client_env: LiveApi, media_root: Path) -> None:
    manifest = make_sample_corpus(media_root, audio=2, video=0, legacy=8, projects=0, corrupt=1)
    ids = register(client_env, media_root, manifest.files)
    outside = media_root.parent / "elsewhere.wav"
    write_tone(outside, freq=300.0, seconds=0.5, rate=8000)
    (media_root / "readme.wav").write_text("not audio")
    bad = [str(outside), str(media_root / "legacy/missing.wav"), str(media_root / "readme.wav")]
    bad_ids = register_legacy_paths(client_env, bad)
    legacy = [f for f in manifest.files if f.legacy]
    conflicted, competed = ids[legacy[-1].uri], ids[legacy[-2].uri]
    competing = Version0Result(
        record_id=competed,
        expected_revision=1,
        uri="renamed/by-someone-else.wav",
        media_type="audio",
        size_bytes=1,
    )
    edits: list[ProgressUpdate] = []

    def edit_meanwhile(update: ProgressUpdate) -> None:
        """After the first chunk, while later chunks (paged already) still wait."""
        if update.processed and not edits:
            edits.append(update)
            bump_revision(client_env, conflicted)
            with api_client(client_env) as client:
                assert client.post_results(KIND, [competing]).applied == 1

    with on_progress(edit_meanwhile):
        report = version_migration(batch_size=2, concurrency=1, max_failure_ratio=0.5)

    assert edits and report.status == "completed"
    assert (report.processed, report.applied, report.rejected, report.failed) == (11, 6, 2, 3)
    records = all_records(client_env)
    for entry in legacy[:-2]:
        record = records[ids[entry.uri]]
        assert record.schema_version == 1, entry.uri
        assert record.uri == entry.uri
        assert record.media_type == entry.media_type
        assert (record.sample_rate, record.channels) == (entry.sample_rate, entry.channels)
        assert record.size_bytes == entry.size_bytes
    # The concurrent edits won: one is still legacy at its new revision, one keeps the other
    # writer's values.
    assert (records[conflicted].schema_version, records[conflicted].revision) == (0, 2)
    assert records[conflicted].uri == str(media_root.resolve() / legacy[-1].uri)
    assert records[competed].uri == "renamed/by-someone-else.wav"
    assert records[competed].size_bytes == 1
    errors = {e.error: e.count for e in report.top_errors}
    # Both lost their race: one was edited, the other upgraded by someone else meanwhile.
    assert errors["conflict: record is at revision 2, expected 1"] == 2
    # Version-1 records are not version-0 work; the bad legacy ones fail with their reason.
    assert ledger(client_env, KIND) == {
        bad_ids[0]: f"{outside} is outside the media root",
        bad_ids[1]: "legacy/missing.wav does not exist",
        bad_ids[2]: "readme.wav is not an audio or video file (unrecognised content)",
    }

    # The next run takes the conflicted record from its new revision (the failures are
    # quarantined: this API quarantines at the first failure); then nothing is left.
    second = version_migration()
    assert (second.processed, second.applied, second.failed) == (1, 1, 0)
    assert all_records(client_env)[conflicted].uri == legacy[-1].uri
    third = version_migration()
    assert (third.status, third.processed) == ("completed", 0)
