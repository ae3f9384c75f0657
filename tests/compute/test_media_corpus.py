"""Durations on a real-world corpus: ~40 formats encoded by ffmpeg at test time, plus
truncated and corrupt copies (see `tests.compute.media_corpus` for where each expected
value comes from). No wrong value, no 0.0 for a failure, every failure with a reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.compute.audio import analyse_audio
from flows.compute.duration import media_duration
from flows.compute.errors import MediaError
from flows.compute.probe import probe
from tests.compute import media_corpus
from tests.compute.media_corpus import Item

#: All on one xdist worker (`--dist loadgroup`): the ffmpeg-encoded corpus is built once, not in each.
pytestmark = pytest.mark.xdist_group("media-corpus")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Item]:
    """The corpus, encoded once per session (about 3 s)."""
    items = media_corpus.build(tmp_path_factory.mktemp("corpus"))
    return {item.name: item for item in items}


NAMES = [
    "source.wav",
    *(name for name, _, _ in media_corpus.AUDIO_FORMATS),
    "pcm.8svx", "pcm.au", "pcm.voc", "odd-36bit.wav", "odd-45bit.wav", "odd-53bit.wav",
    *(name for name, _ in media_corpus.VIDEO_FORMATS),
]  # fmt: skip
BAD = [
    *(f"cut-{name}" for name in ("cbr.mp3", "vbr.mp3", "faststart.m4a", "aac.m4a", "flac.flac",
      "source.wav", "vorbis.ogg", "opus.opus", "wavpack.wv", "alac.m4a", "pcm.w64", "rf64.wav",
      "pcm.caf", "pcm.aiff", "faststart.mp4", "h264.mp4", "vbr-noxing.mp3", "adts.aac",
      "layer2.mp2", "ac3.ac3", "h264.mov", "h264.mkv", "vp9.webm", "vp8.webm", "mpeg4.avi",
      "flv1.flv", "mpeg2.ts")),
    "zeroed-moov.m4a", "noise.flac", "noise.mp3", "text.wav", "stale-xing.mp3",
]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_valid_file_duration_is_right(corpus: dict[str, Item], name: str) -> None:
    item = corpus[name]
    assert item.expected is not None
    info = probe(item.path)
    assert info.media_type == item.media_type
    assert abs(info.duration - item.expected) <= item.tolerance, (info.duration, item.expected)
    assert media_duration(item.path) == info.duration


@pytest.mark.parametrize("name", BAD)
def test_bad_file_fails_with_a_reason_or_is_right(corpus: dict[str, Item], name: str) -> None:
    item = corpus[name]
    try:
        value = media_duration(item.path)
    except MediaError as exc:
        message = str(exc)
        assert message.startswith(item.name) and "\n" not in message
        assert item.reason in message
        return
    assert item.may_fail and item.expected is not None, f"{name}: stored {value}"
    assert value > 0
    assert abs(value - item.expected) <= item.tolerance, (value, item.expected)


def test_truncation_reason_names_both_lengths(corpus: dict[str, Item]) -> None:
    with pytest.raises(MediaError) as caught:
        media_duration(corpus["cut-cbr.mp3"].path)
    assert str(caught.value) == (
        "cut-cbr.mp3 is truncated: header says 2.34567 s, data holds 1.14404 s"
    )


def test_full_precision_not_ffmpeg_banner(corpus: dict[str, Item]) -> None:
    """The 10 ms banner rounding is gone: m4a/ALAC/WavPack are exact to the sample."""
    for name in ("aac.m4a", "alac.m4a", "wavpack.wv", "alac.caf", "aac.mov"):
        frames = media_duration(corpus[name].path) * media_corpus.RATE
        assert abs(frames - media_corpus.FRAMES) < 0.01, name


def test_corpus_paths_are_under_tmp(corpus: dict[str, Item]) -> None:
    assert all(isinstance(item.path, Path) and item.path.exists() for item in corpus.values())


ANALYSED = [name for name in NAMES if not name.startswith(("odd-", "mute"))]


@pytest.mark.parametrize("name", ANALYSED)
def test_analysis_agrees_with_the_duration(corpus: dict[str, Item], name: str) -> None:
    """The two fields of one record agree: the decoded length is the probed one (1 ms; video
    audio tracks within 0.1 s), and the 440 Hz tone is found through every codec."""
    item = corpus[name]
    result = analyse_audio(item.path)
    assert abs(result.frequency - media_corpus.TONE_HZ) < 0.01
    assert abs(result.duration - media_duration(item.path)) <= item.tolerance
    assert result.snr > 30.0
