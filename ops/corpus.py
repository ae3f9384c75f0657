"""A deterministic synthetic sample corpus with known ground truth.

`make_sample_corpus` writes tone-in-noise audio (WAV/FLAC/OGG, 8-48 kHz, mono/stereo),
tiny MP4s with a tone, legacy files (some with a misleading extension), deliberately
corrupt files and clip projects over the videos into a media root, plus ``manifest.json``
describing every file: frequency and SNR as constructed, duration as frames / rate,
sha256 of the bytes as written.

Every file depends only on the seed and its own index (not on the other counts), and the
encoders are made deterministic (the Ogg stream serial, random in libsndfile, is pinned),
so two runs with the same seed give byte-identical files and manifest. A file whose bytes
are already right is not rewritten. Files are written atomically; nothing else under the
root is touched (stale files from a run with other counts are left alone).
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
from moviepy import AudioClip, VideoClip
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from api.schemas import ClipIn, MediaIn, MediaType, ProjectCreate
from flows.compute.render import timeline_seconds

MANIFEST_NAME = "manifest.json"
#: Peak amplitude of every tone (noise rides on top; samples are clipped to [-1, 1]).
TONE_AMPLITUDE = 0.3
#: Sample rate of the audio track of generated videos.
VIDEO_AUDIO_RATE = 44_100
AUDIO_RATES = (8_000, 16_000, 22_050, 44_100, 48_000)
AudioFormat = Literal["wav", "flac", "ogg"]
AUDIO_FORMATS: tuple[AudioFormat, ...] = ("wav", "flac", "ogg")
_SF_FORMAT: dict[AudioFormat, tuple[str, str]] = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
}
#: Fixed Ogg bitstream serial, so OGG output is byte-identical between runs.
_OGG_SERIAL = 0x5EED0001
#: Stream ids mixed into the seed, one per kind of file.
_AUDIO, _VIDEO, _LEGACY, _CORRUPT, _PROJECT = range(5)


class ManifestFile(BaseModel):
    """One file of the corpus and its ground truth (None where it does not apply)."""

    model_config = ConfigDict(extra="forbid")

    uri: str = Field(description="POSIX path relative to the media root.")
    media_type: MediaType = Field(description="The real content type (claimed, if corrupt).")
    format: str = Field(description="Real container: wav, flac, ogg, mp4; or the fake one.")
    legacy: bool = False
    corrupt: bool = False
    size_bytes: int
    sha256: str
    duration: float | None = None
    frequency: float | None = None
    snr: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    expected_error: str | None = Field(default=None, description="Why a corrupt file fails.")

    def media_in(self, root: Path) -> MediaIn:
        """The registration payload: legacy files become version-0 records with an
        ABSOLUTE uri (what the version-0 migration fixes); the rest are version 1."""
        if self.legacy:
            return MediaIn(uri=str(root.resolve() / self.uri), schema_version=0)
        return MediaIn(uri=self.uri, media_type=self.media_type, size_bytes=self.size_bytes)


class ManifestClip(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uri: str
    start: float
    end: float


class ManifestProject(BaseModel):
    """A clip project over corpus videos; ``expected_duration`` uses nominal durations."""

    model_config = ConfigDict(extra="forbid")

    name: str
    owner: str
    clips: list[ManifestClip]
    intro: str | None = None
    outro: str | None = None
    transition: str | None = None
    height: int | None = None
    fps: float
    expected_duration: float

    def project_create(self, media_ids: Mapping[str, int]) -> ProjectCreate:
        """The API payload, given the record id of each registered uri."""
        return ProjectCreate(
            name=self.name,
            owner=self.owner,
            clips=[ClipIn(media_id=media_ids[c.uri], start=c.start, end=c.end) for c in self.clips],
            intro_media_id=media_ids[self.intro] if self.intro else None,
            outro_media_id=media_ids[self.outro] if self.outro else None,
            transition_media_id=media_ids[self.transition] if self.transition else None,
            height=self.height,
            fps=self.fps,
        )


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int
    files: list[ManifestFile]
    projects: list[ManifestProject]

    def file(self, uri: str) -> ManifestFile:
        """The entry for ``uri`` (KeyError if absent)."""
        for entry in self.files:
            if entry.uri == uri:
                return entry
        raise KeyError(uri)


# --- Signal and file writers (also used by tests/media.py) ---------------------------------


def tone_in_noise(
    *,
    freq: float,
    frames: int,
    rate: int,
    channels: int = 1,
    snr_db: float | None = None,
    rng: np.random.Generator,
) -> NDArray[np.float64]:
    """A ``(frames, channels)`` sine of ``freq`` Hz plus white noise at ``snr_db``.

    SNR is tone power (A^2 / 2) over noise variance; the same tone, independent noise per
    channel; random phase. ``snr_db=None`` means a clean tone.
    """
    phase = rng.uniform(0, 2 * np.pi)
    t = np.arange(frames) / rate
    tone = TONE_AMPLITUDE * np.sin(2 * np.pi * freq * t + phase)
    signal = np.repeat(tone[:, None], channels, axis=1)
    if snr_db is not None:
        sigma = np.sqrt(TONE_AMPLITUDE**2 / 2 / 10 ** (snr_db / 10))
        signal = signal + rng.normal(0.0, sigma, size=signal.shape)
    return np.clip(signal, -1.0, 1.0)


def encode_audio(signal: NDArray[np.float64], rate: int, fmt: AudioFormat) -> bytes:
    """Encode samples as 16-bit WAV/FLAC or best-quality Vorbis OGG; equal input gives
    equal bytes."""
    buffer = io.BytesIO()
    container, subtype = _SF_FORMAT[fmt]
    if fmt == "ogg":
        # Best Vorbis quality: the default one adds enough coding noise to pull a 35 dB
        # tone down to ~28 dB measured; at 0.0 the measured SNR stays within ~1 dB.
        sf.write(buffer, signal, rate, format=container, subtype=subtype, compression_level=0.0)
        return _pin_ogg_serial(buffer.getvalue(), _OGG_SERIAL)
    sf.write(buffer, signal, rate, format=container, subtype=subtype)
    return buffer.getvalue()


def write_tone(
    path: Path,
    *,
    freq: float,
    seconds: float,
    rate: int,
    channels: int = 1,
    snr_db: float | None = None,
    seed: int = 0,
    fmt: AudioFormat | None = None,
) -> None:
    """Write a tone (optionally in noise) of ``round(seconds * rate)`` frames to ``path``.

    ``fmt`` defaults to the file extension (wav, flac or ogg); pass it to write, say, WAV
    bytes under a misleading name.
    """
    name = fmt or path.suffix.lstrip(".").lower()
    chosen = next((f for f in AUDIO_FORMATS if f == name), None)
    if chosen is None:
        raise ValueError(f"unknown audio format {name!r}; pass fmt='wav'|'flac'|'ogg'")
    frames = round(seconds * rate)
    rng = np.random.default_rng(seed)
    signal = tone_in_noise(
        freq=freq, frames=frames, rate=rate, channels=channels, snr_db=snr_db, rng=rng
    )
    _publish(path, encode_audio(signal, rate, chosen))


def write_video(
    path: Path,
    *,
    seconds: float,
    size: tuple[int, int] = (64, 48),
    fps: float = 10,
    freq: float = 440.0,
    with_audio: bool = True,
) -> None:
    """Write a tiny H.264 MP4: a moving bar over a colour ramp, and a mono tone of
    ``freq`` Hz (AAC, 44.1 kHz) unless ``with_audio`` is False. Deterministic output."""
    width, height = size
    ramp = np.linspace(0, 255, width, dtype=np.uint8)

    def frame(t: float) -> NDArray[np.uint8]:
        image = np.zeros((height, width, 3), dtype=np.uint8)
        image[:, :, 0] = ramp
        image[:, :, 2] = int(255 * min(t / seconds, 1.0))
        column = int(round(t * fps)) * 4 % width
        image[:, column : column + 4, 1] = 255
        return image

    def sound(t: float | NDArray[np.float64]) -> float | NDArray[np.float64]:
        value: float | NDArray[np.float64] = TONE_AMPLITUDE * np.sin(2 * np.pi * freq * t)
        return value

    clip = VideoClip(frame, duration=seconds)
    if with_audio:
        clip = clip.with_audio(AudioClip(sound, duration=seconds, fps=VIDEO_AUDIO_RATE))
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.parent / f".{path.name}.part.mp4"
    part_audio = path.parent / f".{path.name}.part.m4a"
    try:
        clip.write_videofile(
            str(part),
            fps=fps,
            codec="libx264",
            audio_codec="aac",
            audio_fps=VIDEO_AUDIO_RATE,
            temp_audiofile=str(part_audio),
            preset="veryfast",
            threads=1,
            logger=None,
        )
        _publish(path, part.read_bytes())
    finally:
        clip.close()
        part.unlink(missing_ok=True)
        part_audio.unlink(missing_ok=True)


# --- The corpus ------------------------------------------------------------------------------


def make_sample_corpus(
    root: Path,
    *,
    audio: int = 12,
    video: int = 3,
    legacy: int = 4,
    projects: int = 2,
    corrupt: int = 2,
    seed: int = 0,
) -> Manifest:
    """Write the sample corpus and ``manifest.json`` into ``root``; return the manifest."""
    if min(audio, video, legacy, projects, corrupt) < 0:
        raise ValueError("counts must be >= 0")
    if projects and not video:
        raise ValueError("projects need at least one video")
    root.mkdir(parents=True, exist_ok=True)
    files: list[ManifestFile] = []
    files += [_audio_file(root, seed, i) for i in range(audio)]
    videos = [_video_file(root, seed, i) for i in range(video)]
    files += videos
    files += [_legacy_file(root, seed, i) for i in range(legacy)]
    files += [_corrupt_file(root, seed, i) for i in range(corrupt)]
    manifest = Manifest(
        seed=seed,
        files=files,
        projects=[_project(seed, i, videos) for i in range(projects)],
    )
    _publish(root / MANIFEST_NAME, (manifest.model_dump_json(indent=2) + "\n").encode())
    return manifest


def load_manifest(root: Path) -> Manifest:
    """Read ``root/manifest.json`` (FileNotFoundError if the corpus was never made)."""
    return Manifest.model_validate_json((root / MANIFEST_NAME).read_bytes())


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """A generator that depends only on (seed, kind of file, index)."""
    return np.random.default_rng([seed, stream, index])


def _audio_params(rng: np.random.Generator, index: int) -> tuple[int, int, float, float, int]:
    """(rate, channels, frequency Hz, snr dB, frames): rates and channels cycle by index."""
    rate = AUDIO_RATES[index % len(AUDIO_RATES)]
    channels = 1 + index % 2
    top = min(4000.0, 0.4 * rate)
    freq = round(float(np.exp(rng.uniform(np.log(110.0), np.log(top)))), 1)
    snr = round(float(rng.uniform(5.0, 35.0)), 1)
    frames = round(float(rng.uniform(1.0, 4.0)) * rate)
    return rate, channels, freq, snr, frames


def _tone_entry(
    root: Path, uri: str, rng: np.random.Generator, index: int, fmt: AudioFormat, legacy: bool
) -> ManifestFile:
    rate, channels, freq, snr, frames = _audio_params(rng, index)
    signal = tone_in_noise(
        freq=freq, frames=frames, rate=rate, channels=channels, snr_db=snr, rng=rng
    )
    data = encode_audio(signal, rate, fmt)
    _publish(root / uri, data)
    return ManifestFile(
        uri=uri,
        media_type="audio",
        format=fmt,
        legacy=legacy,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        duration=frames / rate,
        frequency=freq,
        snr=snr,
        sample_rate=rate,
        channels=channels,
    )


def _audio_file(root: Path, seed: int, index: int) -> ManifestFile:
    fmt = AUDIO_FORMATS[index % len(AUDIO_FORMATS)]
    uri = f"audio/tone-{index:02d}.{fmt}"
    return _tone_entry(root, uri, _rng(seed, _AUDIO, index), index, fmt, legacy=False)


def _video_entry(root: Path, uri: str, rng: np.random.Generator, index: int) -> ManifestFile:
    fps = 10
    seconds = (10 + 5 * (index % 3)) / fps  # 1.0, 1.5, 2.0 s: whole frames
    freq = round(float(rng.uniform(220.0, 2000.0)), 1)
    path = root / uri
    write_video(path, seconds=seconds, fps=fps, freq=freq)
    data = path.read_bytes()
    return ManifestFile(
        uri=uri,
        media_type="video",
        format="mp4",
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        duration=seconds,
        frequency=freq,
        sample_rate=VIDEO_AUDIO_RATE,
        channels=1,
    )


def _video_file(root: Path, seed: int, index: int) -> ManifestFile:
    return _video_entry(root, f"video/clip-{index:02d}.mp4", _rng(seed, _VIDEO, index), index)


def _legacy_file(root: Path, seed: int, index: int) -> ManifestFile:
    """Legacy records cycle: WAV named .bin, MP4 named .dat, then plain FLAC and OGG."""
    rng = _rng(seed, _LEGACY, index)
    kind = index % 4
    if kind == 1:
        entry = _video_entry(root, f"legacy/old-{index:02d}.dat", rng, index)
        return entry.model_copy(update={"legacy": True})
    fmt: AudioFormat = ("wav", "wav", "flac", "ogg")[kind]
    suffix = "bin" if kind == 0 else fmt
    uri = f"legacy/old-{index:02d}.{suffix}"
    return _tone_entry(root, uri, rng, index, fmt, legacy=True)


def _corrupt_file(root: Path, seed: int, index: int) -> ManifestFile:
    """Corrupt files cycle: empty WAV, text named .mp4, FLAC cut inside its header,
    random bytes named .ogg."""
    rng = _rng(seed, _CORRUPT, index)
    kind = index % 4
    fmt: str
    media_type: MediaType
    if kind == 0:
        name, fmt, media_type, data = "empty.wav", "wav", "audio", b""
        reason = "empty file"
    elif kind == 1:
        name, fmt, media_type = "not-a-video.mp4", "mp4", "video"
        data = b"This is a text file, not an MP4 video.\n" * 4
        reason = "text file named .mp4"
    elif kind == 2:
        tone = tone_in_noise(freq=440.0, frames=8000, rate=8000, snr_db=20.0, rng=rng)
        data = encode_audio(tone, 8000, "flac")[:30]
        name, fmt, media_type = "truncated.flac", "flac", "audio"
        reason = "FLAC truncated inside its STREAMINFO header"
    else:
        name, fmt, media_type = "noise.ogg", "ogg", "audio"
        data = rng.integers(0, 256, size=4096, dtype=np.uint8).tobytes()
        reason = "random bytes named .ogg"
    uri = f"corrupt/{index:02d}-{name}"
    _publish(root / uri, data)
    return ManifestFile(
        uri=uri,
        media_type=media_type,
        format=fmt,
        corrupt=True,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        expected_error=reason,
    )


def _project(seed: int, index: int, videos: list[ManifestFile]) -> ManifestProject:
    """2-3 frame-aligned clips inside the videos; odd projects add intro, outro,
    transition and a 32 px height."""
    rng = _rng(seed, _PROJECT, index)
    fps = 10.0
    clips: list[ManifestClip] = []
    for k in range(2 + index % 2):
        source = videos[(index + k) % len(videos)]
        frames = round((source.duration or 0.0) * fps)
        start = int(rng.integers(0, frames // 2))
        end = int(rng.integers(start + 3, frames + 1))
        clips.append(ManifestClip(uri=source.uri, start=start / fps, end=end / fps))
    fancy = index % 2 == 1
    intro = videos[0] if fancy else None
    outro = videos[-1] if fancy else None
    transition = videos[0] if fancy else None
    total = timeline_seconds(
        (c.end - c.start for c in clips),
        intro=_seconds(intro),
        outro=_seconds(outro),
        transition=_seconds(transition) if len(clips) > 1 else 0.0,
    )
    return ManifestProject(
        name=f"sample-project-{index:02d}",
        owner=f"owner-{index % 2}",
        clips=clips,
        intro=intro.uri if intro else None,
        outro=outro.uri if outro else None,
        transition=transition.uri if transition else None,
        height=32 if fancy else None,
        fps=fps,
        expected_duration=round(total, 6),
    )


def _seconds(entry: ManifestFile | None) -> float:
    return entry.duration or 0.0 if entry is not None else 0.0


# --- Small file utilities --------------------------------------------------------------------


def _publish(path: Path, data: bytes) -> None:
    """Atomically make ``path`` hold ``data``; leave it alone if it already does."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.parent / f".{path.name}.{os.getpid()}.part"
    try:
        with part.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def _ogg_crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return table


_OGG_CRC = _ogg_crc_table()


def _ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC[((crc >> 24) ^ byte) & 0xFF]
    return crc


def _pin_ogg_serial(data: bytes, serial: int) -> bytes:
    """Rewrite every Ogg page's bitstream serial (libsndfile picks a random one) and its
    CRC, so the same samples always give the same bytes."""
    out = bytearray(data)
    pos = 0
    while pos < len(out):
        if out[pos : pos + 4] != b"OggS":
            raise ValueError(f"not an Ogg page at byte {pos}")
        segments = out[pos + 26]
        body = sum(out[pos + 27 : pos + 27 + segments])
        end = pos + 27 + segments + body
        out[pos + 14 : pos + 18] = struct.pack("<I", serial)
        out[pos + 22 : pos + 26] = bytes(4)
        out[pos + 22 : pos + 26] = struct.pack("<I", _ogg_crc(bytes(out[pos:end])))
        pos = end
    return bytes(out)
