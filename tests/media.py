"""Helpers for tests that need tiny real media files.

    from tests.media import write_tone, write_video, decode_audio, count_frames

    write_tone(tmp_path / "a.flac", freq=440, seconds=1.0, rate=16_000, snr_db=20)
    write_video(tmp_path / "v.mp4", seconds=1.5)          # 64x48, 10 fps, 440 Hz tone
    samples = decode_audio(tmp_path / "v.mp4")            # mono float32 at 16 kHz

`write_tone` writes exactly ``round(seconds * rate)`` frames (WAV/FLAC 16-bit, OGG
Vorbis; ``fmt`` overrides the extension, e.g. WAV bytes named ``.bin``); the tone has
amplitude 0.3 and SNR = tone power / noise variance. Both writers are deterministic
(same arguments -> same bytes). There is no system ffmpeg: these use imageio-ffmpeg's.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from numpy.typing import NDArray

from ops.corpus import TONE_AMPLITUDE, write_tone, write_video

__all__ = [
    "TONE_AMPLITUDE",
    "count_frames",
    "decode_audio",
    "ffmpeg",
    "rms",
    "write_tone",
    "write_video",
]


def ffmpeg(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run the bundled ffmpeg with ``args`` (quiet, no stdin); never raises on failure."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", *args]
    return subprocess.run(command, capture_output=True, timeout=60, check=False)


def decode_audio(path: Path, *, rate: int = 16_000) -> NDArray[np.float32]:
    """Decode the first audio stream of any file to mono float32 at ``rate`` Hz.

    Raises AssertionError if ffmpeg fails (e.g. the file has no audio stream).
    """
    args = ["-v", "error", "-i", str(path), "-map", "0:a:0", "-ac", "1", "-ar", str(rate)]
    done = ffmpeg(*args, "-f", "f32le", "-")
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return np.frombuffer(done.stdout, dtype=np.float32)


def count_frames(path: Path) -> int:
    """Number of frames in the first video stream (decoded, so exact)."""
    done = ffmpeg("-i", str(path), "-map", "0:v:0", "-f", "null", "-")
    found = re.findall(rb"frame=\s*(\d+)", done.stderr)
    assert done.returncode == 0 and found, done.stderr.decode(errors="replace")
    return int(found[-1])


def rms(samples: NDArray[np.floating]) -> float:
    """Root mean square of a sample array (0.0 for an empty one)."""
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0
