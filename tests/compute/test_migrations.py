"""The registered schema migrations: pure steps from (record, file facts) to the next version."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import pytest

from flows.compute.errors import MediaError
from flows.compute.migrations import STEPS, FileFacts, migrate, relative_uri, step_0_to_1
from flows.compute.probe import MediaInfo

ROOT = PurePosixPath("/srv/media")
WAV = MediaInfo(
    media_type="audio",
    duration=2.0,
    sample_rate=22_050,
    channels=2,
    container="wav",
    has_audio=True,
)
MUTE_MP4 = MediaInfo(media_type="video", duration=1.5, container="mp4", has_audio=False)


def legacy(uri: str) -> dict[str, Any]:
    """A version-0 record as `/backfills/version-0/pending` hands it out."""
    return {
        "uri": uri,
        "media_type": None,
        "size_bytes": None,
        "sample_rate": None,
        "channels": None,
        "schema_version": 0,
    }


def facts(path: str | None, info: MediaInfo = WAV, size: int = 1234) -> FileFacts:
    return FileFacts(
        path=PurePosixPath(path) if path else None, media_root=ROOT, size_bytes=size, info=info
    )


def test_step_0_to_1_fills_the_version_1_fields() -> None:
    uri = "/srv/media/old/take 1.bin"

    fields = step_0_to_1(legacy(uri), facts(uri, size=98_765))

    assert fields == {
        "uri": "old/take 1.bin",
        "media_type": "audio",
        "size_bytes": 98_765,
        "sample_rate": 22_050,
        "channels": 2,
        "schema_version": 1,
    }


def test_step_0_to_1_takes_the_type_from_the_content_not_the_name() -> None:
    fields = step_0_to_1(legacy("/srv/media/a.wav"), facts("/srv/media/a.wav", info=MUTE_MP4))

    assert fields["media_type"] == "video"
    assert (fields["sample_rate"], fields["channels"]) == (None, None)


def test_step_0_to_1_uses_the_resolved_file_not_the_recorded_name() -> None:
    # The record named a symlink; the caller resolved it to its target inside the root.
    fields = step_0_to_1(legacy("/srv/media/link.wav"), facts("/srv/media/audio/real.wav"))

    assert fields["uri"] == "audio/real.wav"


def test_step_0_to_1_keeps_an_http_url() -> None:
    url = "https://cdn.example.com/a/b.wav"

    fields = step_0_to_1(legacy(url), facts(None))

    assert fields["uri"] == url and fields["schema_version"] == 1


@pytest.mark.parametrize(
    "path",
    ["/srv/other/a.wav", "/srv/media-old/a.wav", "/srv/a.wav", "/etc/passwd"],
)
def test_step_0_to_1_refuses_a_file_outside_the_media_root(path: str) -> None:
    with pytest.raises(MediaError, match="is outside the media root /srv/media"):
        step_0_to_1(legacy(path), facts(path))


def test_step_0_to_1_refuses_the_root_itself() -> None:
    with pytest.raises(MediaError, match="is the media root itself"):
        step_0_to_1(legacy("/srv/media"), facts("/srv/media"))


def test_step_0_to_1_needs_a_local_file_for_a_path() -> None:
    with pytest.raises(MediaError, match="has no local file"):
        step_0_to_1(legacy("/srv/media/a.wav"), facts(None))


def test_relative_uri_is_posix_and_normalised() -> None:
    assert relative_uri(PurePosixPath("/srv/media/x/y/z.flac"), ROOT) == "x/y/z.flac"
    with pytest.raises(MediaError, match="'..'"):
        relative_uri(PurePosixPath("/srv/media/x/../../etc/passwd"), ROOT)
    with pytest.raises(ValueError, match="absolute"):
        relative_uri(PurePosixPath("x.wav"), ROOT)


def test_steps_are_registered_by_source_version() -> None:
    assert STEPS == {0: step_0_to_1}


def test_migrate_applies_the_chain_to_the_current_version() -> None:
    fields = migrate(legacy("/srv/media/a.wav"), facts("/srv/media/a.wav"))

    assert fields["schema_version"] == 1 and fields["uri"] == "a.wav"


def test_migrate_runs_a_future_step_after_step_0_to_1() -> None:
    """A 1 -> 2 migration is one more registered function."""
    seen: list[dict[str, Any]] = []

    def step_1_to_2(record: dict[str, Any], file: FileFacts) -> dict[str, Any]:
        seen.append(dict(record))
        return {"schema_version": 2, "uri": record["uri"].upper(), "codec": file.info.container}

    fields = migrate(
        legacy("/srv/media/a.wav"),
        facts("/srv/media/a.wav"),
        to_version=2,
        steps={**STEPS, 1: step_1_to_2},
    )

    assert seen[0]["schema_version"] == 1 and seen[0]["uri"] == "a.wav"
    assert fields["schema_version"] == 2
    assert (fields["uri"], fields["codec"], fields["size_bytes"]) == ("A.WAV", "wav", 1234)


def test_migrate_leaves_a_current_record_alone() -> None:
    record = {"uri": "a.wav", "media_type": "audio", "schema_version": 1}

    assert migrate(record, facts("/srv/media/b.wav")) == record


def test_migrate_without_a_step_is_a_bug_not_a_bad_record() -> None:
    with pytest.raises(LookupError, match="from schema_version 1"):
        migrate(legacy("/srv/media/a.wav"), facts("/srv/media/a.wav"), to_version=2)


def test_migrate_checks_that_a_step_moves_one_version() -> None:
    def lazy(record: dict[str, Any], file: FileFacts) -> dict[str, Any]:
        return {"uri": "x"}

    with pytest.raises(ValueError, match="did not produce 1"):
        migrate(legacy("/x"), facts("/srv/media/x"), steps={0: lazy})
    with pytest.raises(ValueError, match="past 1"):
        migrate({"schema_version": 2}, facts("/srv/media/x"))
