"""probe / sniff_container / media_duration on files the tests write."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from flows.compute.duration import media_duration
from flows.compute.errors import MediaError
from flows.compute.probe import MediaInfo, probe, sniff_container
from tests.compute.conftest import Video, WriteTone, run_ffmpeg

RATES = [8_000, 16_000, 22_050, 44_100, 48_000]


# --- Durations ------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("ext", ["wav", "flac"])
@pytest.mark.parametrize("channels", [1, 2])
def test_lossless_duration_is_exact(
    write_tone: WriteTone, rate: int, ext: str, channels: int
) -> None:
    tone = write_tone(f"t.{ext}", sample_rate=rate, seconds=1.2345, channels=channels)
    info = probe(tone.path)
    assert info == MediaInfo(
        media_type="audio",
        duration=tone.frames / rate,
        sample_rate=rate,
        channels=channels,
        container=ext,
        has_audio=True,
    )
    assert media_duration(tone.path) == tone.frames / rate


@pytest.mark.parametrize("rate", [8_000, 22_050, 48_000])
def test_ogg_duration_within_a_millisecond(write_tone: WriteTone, rate: int) -> None:
    tone = write_tone("t.ogg", sample_rate=rate, seconds=2.71, channels=2)
    info = probe(tone.path)
    assert info.container == "ogg" and info.media_type == "audio"
    assert (info.sample_rate, info.channels) == (rate, 2)
    assert abs(media_duration(tone.path) - tone.frames / rate) <= 1e-3


def test_mp3_written_by_libsndfile(write_tone: WriteTone) -> None:
    tone = write_tone("t.mp3", sample_rate=44_100, seconds=1.5, fmt="MP3")
    info = probe(tone.path)
    assert (info.container, info.media_type, info.sample_rate) == ("mp3", "audio", 44_100)
    assert abs(info.duration - tone.duration) <= 0.05


def test_mp4_duration_within_one_frame(mp4_with_audio: Video) -> None:
    info = probe(mp4_with_audio.path)
    assert info.media_type == "video"
    assert info.container == "mp4"
    assert info.has_audio
    assert (info.sample_rate, info.channels) == (mp4_with_audio.audio_rate, 2)
    assert abs(info.duration - mp4_with_audio.seconds) <= 1 / mp4_with_audio.fps
    assert abs(media_duration(mp4_with_audio.path) - mp4_with_audio.seconds) <= 0.1


def test_mp4_without_audio(mp4_without_audio: Video) -> None:
    info = probe(mp4_without_audio.path)
    assert info.media_type == "video"
    assert not info.has_audio
    assert info.sample_rate is None and info.channels is None
    assert abs(info.duration - mp4_without_audio.seconds) <= 1 / mp4_without_audio.fps


def test_header_wav_without_frames_has_zero_duration(tmp_path: Path) -> None:
    sf.write(tmp_path / "none.wav", np.zeros((0, 1)), 8000)
    assert media_duration(tmp_path / "none.wav") == 0.0


# --- Type from content, not name -----------------------------------------------------------


def test_wav_named_mp4_is_audio(write_tone: WriteTone, tmp_path: Path) -> None:
    tone = write_tone("t.wav", seconds=0.5)
    renamed = tmp_path / "looks-like-video.mp4"
    shutil.copy(tone.path, renamed)
    info = probe(renamed)
    assert (info.media_type, info.container) == ("audio", "wav")
    assert info.duration == tone.duration


def test_mp4_named_wav_is_video(mp4_with_audio: Video, tmp_path: Path) -> None:
    renamed = tmp_path / "looks-like-audio.wav"
    shutil.copy(mp4_with_audio.path, renamed)
    info = probe(renamed)
    assert (info.media_type, info.container) == ("video", "mp4")
    assert info == probe(mp4_with_audio.path)


def test_cover_art_is_not_video(write_tone: WriteTone, tmp_path: Path) -> None:
    """An M4A with an attached picture (cover art) is audio; ffmpeg reads it."""
    tone = write_tone("t.wav", sample_rate=48_000, seconds=1.0)
    cover = tmp_path / "cover.png"
    run_ffmpeg("-f", "lavfi", "-i", "color=red:s=32x32", "-frames:v", "1", str(cover))
    m4a = tmp_path / "song.m4a"
    run_ffmpeg(
        "-i", str(tone.path), "-i", str(cover), "-map", "0:a", "-map", "1:v",
        "-c:a", "aac", "-c:v", "copy", "-disposition:v:0", "attached_pic", str(m4a),
    )  # fmt: skip
    info = probe(m4a)
    assert (info.media_type, info.container, info.has_audio) == ("audio", "mp4", True)
    assert (info.sample_rate, info.channels) == (48_000, 1)
    assert abs(info.duration - tone.duration) <= 0.05


# --- Sniffing ------------------------------------------------------------------------------


def test_sniff_by_magic_bytes(write_tone: WriteTone, mp4_with_audio: Video, tmp_path: Path) -> None:
    for ext, fmt in [("wav", None), ("flac", None), ("ogg", None), ("aiff", None), ("mp3", "MP3")]:
        tone = write_tone(f"x.{ext}", seconds=0.2, fmt=fmt)
        # the name says nothing: copy under a neutral name
        neutral = tmp_path / f"neutral-{ext}.bin"
        shutil.copy(tone.path, neutral)
        assert sniff_container(neutral) == ext
    assert sniff_container(mp4_with_audio.path) == "mp4"
    webm = tmp_path / "clip.webm"
    run_ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:duration=0.3", "-c:a", "libopus", str(webm))
    assert sniff_container(webm) == "webm"
    assert probe(webm).media_type == "audio"
    (tmp_path / "notes.txt").write_text("hello, these are not samples\n")
    assert sniff_container(tmp_path / "notes.txt") is None


def test_sniff_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match=r"^nothing\.wav does not exist$"):
        sniff_container(tmp_path / "nothing.wav")


# --- Bad files ----------------------------------------------------------------------------


def _valid_wav_bytes(write_tone: WriteTone) -> bytes:
    return write_tone("source.wav", sample_rate=8000, seconds=0.5).path.read_bytes()


def bad_files(tmp_path: Path, write_tone: WriteTone, mp4: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, regex the message must match)."""
    wav = _valid_wav_bytes(write_tone)
    flac = write_tone("source.flac", sample_rate=8000, seconds=2.0).path.read_bytes()
    garbage = np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    files = {
        "empty.wav": (b"", r"empty\.wav is empty"),
        "header-cut.wav": (wav[:30], r"header-cut\.wav is truncated"),
        "data-cut.wav": (wav[: len(wav) // 2], r"data-cut\.wav is truncated"),
        "garbage.wav": (garbage, r"garbage\.wav is not an audio or video file"),
        "riff-garbage.wav": (
            b"RIFF" + (len(garbage) + 4).to_bytes(4, "little") + b"WAVE" + garbage,
            r"riff-garbage\.wav is corrupt, truncated or not a media file",
        ),
        "cut.flac": (flac[: len(flac) // 2], r"cut\.flac is truncated or corrupt"),
        "cut.mp4": (mp4.read_bytes()[:4000], r"cut\.mp4 is corrupt, truncated or not a media"),
        "readme.txt": (b"just text\n" * 50, r"readme\.txt is not an audio or video file"),
        "image.png": (b"\x89PNG\r\n\x1a\n" + garbage, r"image\.png is not an audio or video file"),
    }
    out = {}
    for name, (data, pattern) in files.items():
        (tmp_path / name).write_bytes(data)
        out[name] = (tmp_path / name, pattern)
    return out


def test_bad_files_raise_one_clear_sentence(
    tmp_path: Path, write_tone: WriteTone, mp4_with_audio: Video
) -> None:
    for path, pattern in bad_files(tmp_path, write_tone, mp4_with_audio.path).values():
        for function in (probe, media_duration):
            with pytest.raises(MediaError, match=f"^{pattern}") as caught:
                function(path)
            message = str(caught.value)
            assert "\n" not in message and "Traceback" not in message
            assert path.name in message


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match=r"^absent\.mp4 does not exist$"):
        probe(tmp_path / "absent.mp4")
    (tmp_path / "album").mkdir()
    with pytest.raises(MediaError, match=r"^album is a directory"):
        media_duration(tmp_path / "album")


# --- Header-only, soundfile first ----------------------------------------------------------


def test_soundfile_formats_never_start_ffmpeg(
    write_tone: WriteTone, monkeypatch: pytest.MonkeyPatch
) -> None:
    tones = [write_tone(f"t.{ext}", seconds=0.3) for ext in ("wav", "flac", "ogg")]

    def no_ffmpeg(*args: object, **kwargs: object) -> None:
        raise AssertionError("ffmpeg used for a libsndfile format")

    monkeypatch.setattr(subprocess, "run", no_ffmpeg)
    monkeypatch.setattr(av, "open", no_ffmpeg)
    for tone in tones:
        assert probe(tone.path).sample_rate == tone.sample_rate
