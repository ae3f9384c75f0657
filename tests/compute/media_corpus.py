"""A real-world media corpus, encoded by ffmpeg (imageio-ffmpeg's binary) at test time.

Every audio file is the same synthesised tone (`FRAMES` samples at `RATE` Hz) in another
format; each video is `VIDEO_SECONDS` of a moving bar. Truncated and corrupt variants are
cut or damaged copies. Each entry states its expected duration from an independent source:

- the synthesised sample count, for formats that carry sample-accurate length information
  (PCM containers, FLAC, WavPack, ALAC, mp3 with a LAME tag, m4a with an edit list, opus,
  vorbis), to 1 ms;
- a full decode by the ffmpeg command line (`decoded_seconds`), for formats that carry no
  such information (mp3 without a LAME tag, mp2, ADTS, AC-3), to 1 ms;
- the synthesised length, for video, to 0.1 s;
- `None`: the file must fail (truncated or corrupt) with a reason containing `reason`.

Files that end early in a format without any length information (a cut ADTS or a cut mp3
without header) are indistinguishable from a shorter file; for them the expected value is
the full decode of what is there (or a failure).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import soundfile as sf

RATE = 44_100
#: An odd length (2.345669 s), so no format rounds it to a whole frame by luck.
FRAMES = 103_444
SECONDS = FRAMES / RATE
TONE_HZ = 440.0
VIDEO_SECONDS = 2.0
AUDIO_TOLERANCE = 1e-3
VIDEO_TOLERANCE = 0.1


@dataclass(frozen=True)
class Item:
    """One corpus file: what it is, and what a correct reader returns for it."""

    name: str
    path: Path
    expected: float | None  # seconds, or None: must fail
    tolerance: float = AUDIO_TOLERANCE
    reason: str = ""  # a substring the failure reason must contain
    may_fail: bool = False  # a cut file without length info: a failure is also right

    @property
    def media_type(self) -> str:
        return "video" if self.tolerance == VIDEO_TOLERANCE else "audio"


def ffmpeg(*args: str) -> None:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-y", "-v", "error"]
    done = subprocess.run([*command, *args], capture_output=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.decode(errors="replace"))


def decoded_seconds(path: Path) -> float:
    """Seconds of audio a full decode by the ffmpeg command line yields (the first audio
    stream, at its native rate): the independent reference for formats without length info."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path)]
    command += ["-map", "0:a:0", "-f", "f32le", "-ac", "1", "-c:a", "pcm_f32le", "pipe:1"]
    done = subprocess.run(command, capture_output=True, timeout=120, check=False)
    return len(done.stdout) / 4 / _rate_of(path)


def _rate_of(path: Path) -> int:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)]
    text = subprocess.run(command, capture_output=True, timeout=60, check=False).stderr.decode()
    for line in text.splitlines():
        if "Audio:" in line and " Hz" in line:
            return int(line.split(" Hz")[0].rsplit(" ", 1)[-1])
    raise RuntimeError(f"no audio rate in {path}")


def tone(frames: int = FRAMES, rate: int = RATE) -> np.ndarray:
    t = np.arange(frames) / rate
    return 0.5 * np.sin(2 * np.pi * TONE_HZ * t)


def cut(source: Path, target: Path, share: float) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * share)])
    return target


def wav_odd_depth(path: Path, valid_bits: int, frames: int, rate: int = 8000) -> Path:
    """A WAVE_FORMAT_EXTENSIBLE file with `valid_bits`-bit samples in ceil(bits/8)-byte
    containers (36, 45, 53 bit as in SciPy's test files): neither libsndfile nor ffmpeg
    decodes them."""
    width = (valid_bits + 7) // 8
    channels = 1
    data = b"\x00" * (frames * width * channels)
    guid = b"\x01\x00\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    fmt = (
        (0xFFFE).to_bytes(2, "little")
        + channels.to_bytes(2, "little")
        + rate.to_bytes(4, "little")
        + (rate * width * channels).to_bytes(4, "little")
        + (width * channels).to_bytes(2, "little")
        + (width * 8).to_bytes(2, "little")
        + (22).to_bytes(2, "little")
        + valid_bits.to_bytes(2, "little")
        + (4).to_bytes(4, "little")
        + guid
    )
    body = b"WAVE" + b"fmt " + len(fmt).to_bytes(4, "little") + fmt
    body += b"data" + len(data).to_bytes(4, "little") + data
    path.write_bytes(b"RIFF" + len(body).to_bytes(4, "little") + body)
    return path


#: (file name, ffmpeg output arguments, expected from: "samples" or "decode")
AUDIO_FORMATS: list[tuple[str, list[str], str]] = [
    ("cbr.mp3", ["-c:a", "libmp3lame", "-b:a", "128k"], "samples"),
    ("vbr.mp3", ["-c:a", "libmp3lame", "-q:a", "4"], "samples"),
    ("vbr-noxing.mp3", ["-c:a", "libmp3lame", "-q:a", "4", "-write_xing", "0"], "decode"),
    ("cbr-noxing.mp3", ["-c:a", "libmp3lame", "-b:a", "128k", "-write_xing", "0"], "decode"),
    ("layer2.mp2", ["-c:a", "mp2", "-b:a", "192k"], "decode"),
    ("adts.aac", ["-c:a", "aac", "-b:a", "128k", "-f", "adts"], "decode"),
    ("aac.m4a", ["-c:a", "aac", "-b:a", "128k"], "samples"),
    ("faststart.m4a", ["-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart"], "samples"),
    ("alac.m4a", ["-c:a", "alac"], "samples"),
    ("opus.opus", ["-c:a", "libopus", "-b:a", "64k"], "samples"),
    ("vorbis.ogg", ["-c:a", "libvorbis", "-q:a", "4"], "samples"),
    ("flac.flac", ["-c:a", "flac"], "samples"),
    ("wavpack.wv", ["-c:a", "wavpack"], "samples"),
    ("ac3.ac3", ["-c:a", "ac3", "-b:a", "192k"], "decode"),
    ("pcm.caf", ["-c:a", "pcm_s16be"], "samples"),
    ("alac.caf", ["-c:a", "alac"], "samples"),
    ("pcm.w64", ["-c:a", "pcm_s16le"], "samples"),
    ("rf64.wav", ["-c:a", "pcm_s16le", "-rf64", "always"], "samples"),
    ("flac.mka", ["-c:a", "flac"], "samples"),
    ("aac.mov", ["-c:a", "aac", "-b:a", "128k"], "samples"),
    ("pcm.aiff", ["-c:a", "pcm_s16be"], "samples"),
]

#: (file name, ffmpeg output arguments) of 2 s videos with a 44.1 kHz tone where the
#: container takes one.
VIDEO_FORMATS: list[tuple[str, list[str]]] = [
    ("h264.mp4", ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"]),
    ("faststart.mp4", ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
                       "-movflags", "+faststart"]),
    ("h264.mov", ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"]),
    ("h264.mkv", ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "flac"]),
    ("vp9.webm", ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8",
                  "-c:a", "libopus"]),
    ("vp8.webm", ["-c:v", "libvpx", "-deadline", "realtime", "-c:a", "libvorbis"]),
    ("mpeg4.avi", ["-c:v", "mpeg4", "-c:a", "libmp3lame"]),
    ("flv1.flv", ["-c:v", "flv", "-c:a", "libmp3lame", "-ar", "44100"]),
    ("mpeg2.ts", ["-c:v", "mpeg2video", "-c:a", "mp2"]),
    ("mute.mp4", ["-c:v", "libx264", "-preset", "ultrafast", "-an"]),
]  # fmt: skip


def build(directory: Path) -> list[Item]:
    """Write the corpus under `directory` (a few seconds of encoding) and list it."""
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / "source.wav"
    sf.write(source, tone(), RATE, subtype="FLOAT")
    items: list[Item] = [Item("source.wav", source, SECONDS)]

    for name, args, reference in AUDIO_FORMATS:
        path = directory / name
        ffmpeg("-i", str(source), *args, str(path))
        expected = SECONDS if reference == "samples" else decoded_seconds(path)
        items.append(Item(name, path, expected))

    # libsndfile-only formats, written with soundfile itself.
    for name, fmt, subtype in [
        ("pcm.8svx", "SVX", "PCM_16"),
        ("pcm.au", "AU", "PCM_16"),
        ("pcm.voc", "VOC", "PCM_16"),
    ]:
        path = directory / name
        sf.write(path, tone(), RATE, format=fmt, subtype=subtype)
        items.append(Item(name, path, SECONDS))

    # Odd bit depths: the duration is in the header and verifiable from the file's size.
    for bits in (36, 45, 53):
        path = wav_odd_depth(directory / f"odd-{bits}bit.wav", bits, frames=8_000)
        items.append(Item(path.name, path, 1.0))

    video_source = directory / "video-source.mkv"
    ffmpeg(
        "-f", "lavfi", "-i", f"testsrc=size=64x48:rate=25:duration={VIDEO_SECONDS}",
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={VIDEO_SECONDS}",
        "-c:v", "ffv1", "-c:a", "pcm_s16le", str(video_source),
    )  # fmt: skip
    for name, args in VIDEO_FORMATS:
        path = directory / name
        ffmpeg("-i", str(video_source), *args, str(path))
        items.append(Item(name, path, VIDEO_SECONDS, tolerance=VIDEO_TOLERANCE))

    by_name = {item.name: item for item in items}
    bad = directory / "bad"
    bad.mkdir(exist_ok=True)

    def truncated(name: str, share: float, *, may_fail: bool = False) -> None:
        path = cut(by_name[name].path, bad / f"cut-{name}", share)
        expected = decoded_seconds(path) if may_fail else None
        tolerance = by_name[name].tolerance
        items.append(
            Item(path.name, path, expected, tolerance, reason="truncated", may_fail=may_fail)
        )

    for name in ("cbr.mp3", "vbr.mp3", "faststart.m4a", "aac.m4a", "flac.flac", "source.wav",
                 "vorbis.ogg", "opus.opus", "wavpack.wv", "alac.m4a", "pcm.w64", "rf64.wav",
                 "pcm.caf", "pcm.aiff"):  # fmt: skip
        truncated(name, 0.5)
    truncated("faststart.mp4", 0.6)
    truncated("h264.mp4", 0.6)
    for name in ("h264.mov", "h264.mkv", "vp9.webm", "vp8.webm", "mpeg4.avi", "flv1.flv"):
        truncated(name, 0.5)
    truncated("mpeg2.ts", 0.5, may_fail=True)  # MPEG-TS states no length
    for name in ("vbr-noxing.mp3", "adts.aac", "layer2.mp2", "ac3.ac3"):
        truncated(name, 0.5, may_fail=True)

    # Corrupt: the index zeroed, or the stream replaced by noise after a valid header.
    rng = np.random.default_rng(7)
    data = bytearray(by_name["faststart.m4a"].path.read_bytes())
    moov = data.find(b"moov")
    data[moov + 4 : moov + 200] = bytes(196)
    (bad / "zeroed-moov.m4a").write_bytes(bytes(data))
    items.append(Item("zeroed-moov.m4a", bad / "zeroed-moov.m4a", None))
    data = bytearray(by_name["flac.flac"].path.read_bytes())
    data[200:] = rng.bytes(len(data) - 200)
    (bad / "noise.flac").write_bytes(bytes(data))
    items.append(Item("noise.flac", bad / "noise.flac", None))
    (bad / "noise.mp3").write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + rng.bytes(20_000))
    items.append(Item("noise.mp3", bad / "noise.mp3", None))
    # A stale Xing header: a second encoding appended after the first one's frames.
    stale = by_name["cbr.mp3"].path.read_bytes() + by_name["cbr-noxing.mp3"].path.read_bytes()
    (bad / "stale-xing.mp3").write_bytes(stale)
    items.append(Item("stale-xing.mp3", bad / "stale-xing.mp3", None, reason="disagrees"))
    (bad / "text.wav").write_bytes(b"just some text, not audio\n" * 10)
    items.append(Item("text.wav", bad / "text.wav", None, reason="not an audio or video file"))
    return items
