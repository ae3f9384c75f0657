"""Fixtures that write real media for the compute tests (numpy + soundfile, moviepy, ffmpeg).

Every file is built from parameters the test states (rate, tone, SNR, seed); tests compare
what the code computes with those parameters, never with recorded outputs.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile as sf
from numpy.typing import NDArray

#: Peak level the written signals are scaled to (scaling does not change an SNR).
PEAK = 0.9


@dataclass(frozen=True)
class Tone:
    """A written tone file and how it was built."""

    path: Path
    sample_rate: int
    frequency: float
    snr_db: float | None
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def tone_samples(
    sample_rate: int,
    frequency: float,
    frames: int,
    snr_db: float | None,
    channels: int = 1,
    seed: int = 0,
) -> NDArray[np.float64]:
    """(frames, channels): a unit sine per channel (random phase each) plus independent white
    Gaussian noise of variance (1/2) / 10^(snr/10) per channel, scaled to a PEAK peak."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / sample_rate
    columns = []
    for _ in range(channels):
        column = np.sin(2 * np.pi * frequency * t + rng.uniform(0, 2 * np.pi))
        if snr_db is not None:
            column += rng.normal(0.0, np.sqrt(0.5 / 10 ** (snr_db / 10)), frames)
        columns.append(column)
    signal: NDArray[np.float64] = np.stack(columns, axis=1)
    signal *= PEAK / np.max(np.abs(signal))
    return signal


WriteTone = Callable[..., Tone]


@pytest.fixture
def write_tone(tmp_path: Path) -> WriteTone:
    """``write_tone(name, sample_rate=, frequency=, seconds=, snr_db=, channels=, seed=,
    subtype=, fmt=)`` writes a tone file under tmp_path and returns its `Tone`."""

    def write(
        name: str = "tone.wav",
        *,
        sample_rate: int = 16_000,
        frequency: float = 440.0,
        seconds: float = 1.0,
        snr_db: float | None = 20.0,
        channels: int = 1,
        seed: int = 0,
        subtype: str | None = None,
        fmt: str | None = None,
    ) -> Tone:
        path = tmp_path / name
        frames = round(seconds * sample_rate)
        signal = tone_samples(sample_rate, frequency, frames, snr_db, channels, seed)
        sf.write(path, signal, sample_rate, subtype=subtype, format=fmt)
        return Tone(path, sample_rate, frequency, snr_db, channels, frames)

    return write


def run_ffmpeg(*args: str) -> None:
    """Run imageio-ffmpeg's binary quietly; fail the test if it fails."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-y", "-v", "error"]
    done = subprocess.run([*command, *args], capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")


@dataclass(frozen=True)
class Video:
    path: Path
    seconds: float
    fps: float
    tone_hz: float | None
    audio_rate: int | None


VIDEO_SECONDS = 1.5
VIDEO_FPS = 10.0
VIDEO_TONE_HZ = 440.0
VIDEO_AUDIO_RATE = 44_100


def _write_video(path: Path, *, with_audio: bool) -> Video:
    """A 64x48, 10 fps, 1.5 s H.264 MP4 written with moviepy, optionally with a stereo
    440 Hz AAC track at 44.1 kHz."""
    from moviepy import AudioClip, VideoClip

    def frame(t: float) -> NDArray[np.uint8]:
        image = np.zeros((48, 64, 3), dtype=np.uint8)
        image[:, : 1 + int(t * 40) % 64, 1] = 200
        return image

    def sound(t: NDArray[np.float64] | float) -> NDArray[np.float64]:
        wave = 0.5 * np.sin(2 * np.pi * VIDEO_TONE_HZ * np.asarray(t, dtype=np.float64))
        return np.stack([wave, wave], axis=-1)

    clip = VideoClip(frame, duration=VIDEO_SECONDS).with_fps(VIDEO_FPS)
    if with_audio:
        clip = clip.with_audio(AudioClip(sound, duration=VIDEO_SECONDS, fps=VIDEO_AUDIO_RATE))
    clip.write_videofile(
        str(path),
        fps=VIDEO_FPS,
        codec="libx264",
        audio=with_audio,
        audio_codec="aac",
        audio_fps=VIDEO_AUDIO_RATE,
        # Beside the video: moviepy's default is <name>TEMP_MPY_wvf_snd.mp4 in the current
        # folder (the repository), where two xdist workers writing tone.mp4 at once deleted
        # each other's.
        temp_audiofile=str(path.with_name(f"{path.stem}-audio.m4a")),
        logger=None,
    )
    clip.close()
    return Video(
        path,
        VIDEO_SECONDS,
        VIDEO_FPS,
        VIDEO_TONE_HZ if with_audio else None,
        VIDEO_AUDIO_RATE if with_audio else None,
    )


@pytest.fixture(scope="session")
def mp4_with_audio(tmp_path_factory: pytest.TempPathFactory) -> Video:
    return _write_video(tmp_path_factory.mktemp("video") / "tone.mp4", with_audio=True)


@pytest.fixture(scope="session")
def mp4_without_audio(tmp_path_factory: pytest.TempPathFactory) -> Video:
    return _write_video(tmp_path_factory.mktemp("video") / "mute.mp4", with_audio=False)


Mux = Callable[[Path, str], Path]


@pytest.fixture
def mux_pcm_video(tmp_path: Path, mp4_without_audio: Video) -> Mux:
    """``mux_pcm_video(audio_file, name)``: the silent MP4's picture plus `audio_file` as
    lossless 16-bit PCM in a Matroska file, so the ffmpeg decode path sees exact samples."""

    def mux(audio: Path, name: str = "video.mkv") -> Path:
        out = tmp_path / name
        run_ffmpeg(
            "-i", str(mp4_without_audio.path), "-i", str(audio),
            "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "pcm_s16le",
            str(out),
        )  # fmt: skip
        return out

    return mux
