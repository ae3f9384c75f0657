"""What a media file is, from its headers only: type, duration, rate, channels, container.

Three cheap steps, each able to reject a bad file early:

1. `sniff_container` reads the first few KiB and recognises the container by its magic
   bytes. Anything it does not recognise (text, images, archives, random bytes) is
   rejected here, without starting a decoder.
2. Containers libsndfile reads (WAV, FLAC, Ogg audio, MP3, AIFF, AU, CAF, W64) are opened
   with `soundfile`: the duration is ``frames / samplerate`` exactly, in tens of
   microseconds. A WAV whose RIFF header declares more bytes than the file holds, or a
   FLAC whose last frame cannot be read, is reported as truncated.
3. Everything else (MP4/MOV, Matroska/WebM, AVI, Ogg with Theora, ...) and anything
   libsndfile refuses goes to ``ffmpeg -i`` (the imageio-ffmpeg binary), whose stderr
   banner gives the duration and the streams. ffmpeg only reads headers here.

The media type comes from the content, never from the file name: a video stream that is
not an attached picture (cover art) makes a file "video"; otherwise an audio stream makes
it "audio"; otherwise it is not media.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path

import soundfile as sf
from pydantic import BaseModel, Field

from api.schemas import MediaType
from flows.compute.errors import MediaError, stat_regular_file

#: Bytes read from the start of a file to recognise its container.
HEAD_BYTES = 4096
#: Seconds ``ffmpeg -i`` may take to read a file's headers.
PROBE_TIMEOUT_S = 60.0
#: Frames read from the end of a FLAC file to prove it is not truncated.
FLAC_TAIL_FRAMES = 4096
#: Containers libsndfile can read; they are tried with soundfile first.
SOUNDFILE_CONTAINERS = frozenset({"wav", "w64", "aiff", "au", "caf", "flac", "ogg", "mp3"})


class MediaInfo(BaseModel):
    """Header facts about one media file."""

    media_type: MediaType
    duration: float = Field(ge=0, description="Seconds.")
    sample_rate: int | None = Field(default=None, description="Hz of the (first) audio stream.")
    channels: int | None = Field(default=None, description="Channels of the audio stream.")
    container: str = Field(description='Container by content, e.g. "wav", "flac", "mp4".')
    has_audio: bool


def display_name(path: Path) -> str:
    """How a file is named in error messages: its name, never a traceback or full path."""
    return path.name or str(path)


# --- Reading the head ----------------------------------------------------------------------


def _regular_file_size(path: Path) -> int:
    """Size of `path`, or MediaError if it is missing, not a regular file, or unreadable."""
    return stat_regular_file(path).st_size


def _read_at(path: Path, offset: int, size: int) -> bytes:
    name = display_name(path)
    try:
        with open(path, "rb", buffering=0) as handle:
            if offset:
                handle.seek(offset)
            return handle.read(size) or b""
    except FileNotFoundError:
        raise MediaError(f"{name} does not exist") from None
    except PermissionError:
        raise MediaError(f"{name} is not readable (permission denied)") from None
    except OSError as exc:
        raise MediaError(f"{name} could not be read: {exc.strerror or exc}") from None


def _is_mpeg_audio_sync(data: bytes) -> bool:
    """An MPEG-1/2/2.5 layer I-III frame header (mp3): 11 sync bits, valid version/layer."""
    if len(data) < 4 or data[0] != 0xFF or data[1] & 0xE0 != 0xE0:
        return False
    version = (data[1] >> 3) & 0x3
    layer = (data[1] >> 1) & 0x3
    bitrate = data[2] >> 4
    rate = (data[2] >> 2) & 0x3
    return version != 1 and layer != 0 and bitrate != 0xF and rate != 0x3


def _is_adts_sync(data: bytes) -> bool:
    """An ADTS (raw AAC) frame header: 12 sync bits and layer 0."""
    return len(data) >= 2 and data[0] == 0xFF and data[1] & 0xF6 == 0xF0


_OGG_VIDEO_MARKERS = (b"\x80theora", b"OVP80", b"BBCD\x00")
_MOV_ATOMS = (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")


def _sniff(head: bytes, path: Path | None = None) -> str | None:
    """Container name from the first bytes of a file, or None if it is not a media container.

    `path` is only needed to look past an ID3v2 tag (to tell mp3 from ID3-tagged flac).
    """
    if len(head) < 4:
        return None
    tag4, kind = head[:4], head[8:12]
    if tag4 in (b"RIFF", b"RIFX", b"RF64", b"BW64"):
        if kind == b"WAVE":
            return "wav"
        if kind == b"AVI ":
            return "avi"
        return None
    if tag4 == b"riff" and head[4:8] == b"\x2e\x91\xcf\x11":  # Sony Wave64 GUID
        return "w64"
    if tag4 == b"FORM" and kind in (b"AIFF", b"AIFC"):
        return "aiff"
    if tag4 == b"fLaC":
        return "flac"
    if tag4 == b"OggS":
        window = head[:HEAD_BYTES]
        return "ogv" if any(marker in window for marker in _OGG_VIDEO_MARKERS) else "ogg"
    if head[4:8] == b"ftyp":
        return "mov" if head[8:12] == b"qt  " else "mp4"
    if head[4:8] in _MOV_ATOMS:
        return "mov"
    if tag4 == b"\x1a\x45\xdf\xa3":  # EBML
        return "webm" if b"webm" in head[:64] else "mkv"
    if tag4 == b".snd":
        return "au"
    if tag4 == b"caff":
        return "caf"
    if head[:3] == b"FLV":
        return "flv"
    if head[:8] == b"\x30\x26\xb2\x75\x8e\x66\xcf\x11":  # ASF header GUID
        return "asf"
    if tag4 in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):
        return "mpeg"
    if head[0] == 0x47 and len(head) > 376 and head[188] == 0x47 and head[376] == 0x47:
        return "mpegts"
    if head[:5] == b"#!AMR":
        return "amr"
    if tag4 == b"MAC ":
        return "ape"
    if tag4 == b"wvpk":
        return "wavpack"
    if head[:3] == b"ID3":
        if len(head) >= 10 and path is not None:
            size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
            offset = 10 + size + (10 if head[5] & 0x10 else 0)
            after = head[offset : offset + 4] if offset + 4 <= len(head) else b""
            if not after:
                after = _read_at(path, offset, 4)
            if after == b"fLaC":
                return "flac"
            if _is_adts_sync(after):
                return "aac"
        return "mp3"
    if _is_mpeg_audio_sync(head):
        return "mp3"
    if _is_adts_sync(head):
        return "aac"
    if head[:2] == b"\x0b\x77":
        return "ac3"
    return None


def sniff_container(path: Path) -> str | None:
    """The container of `path` by its magic bytes ("wav", "flac", "ogg", "mp4", "mov", "mp3",
    "webm", "mkv", ...), or None if the content is not a recognised audio/video container.

    Raises `MediaError` if the file is missing, not a regular file or unreadable.
    """
    _regular_file_size(path)
    return _sniff(_read_at(path, 0, HEAD_BYTES), path)


# --- soundfile -----------------------------------------------------------------------------


def _check_wav_length(head: bytes, size: int, name: str) -> None:
    """A RIFF WAV whose header declares more bytes than the file holds was cut short."""
    if head[:4] != b"RIFF" or len(head) < 8:
        return
    declared = int.from_bytes(head[4:8], "little")
    # 0 and 0xFFFFFFFF are the placeholders streaming writers leave; 1 byte of slack for
    # writers that forget the pad byte.
    if declared in (0, 0xFFFFFFFF) or declared + 8 <= size + 1:
        return
    raise MediaError(
        f"{name} is truncated: its WAV header declares {declared + 8} bytes but the file has {size}"
    )


def _probe_soundfile(path: Path, container: str, head: bytes, size: int) -> MediaInfo | None:
    """MediaInfo via libsndfile, None if libsndfile cannot read the file, MediaError if
    it reads it and finds it truncated."""
    name = display_name(path)
    if container == "wav":
        _check_wav_length(head, size, name)
    try:
        with sf.SoundFile(path) as handle:
            frames, rate, channels = handle.frames, handle.samplerate, handle.channels
            if container == "flac" and frames > 0:
                # STREAMINFO states the length; a cut file only shows when the end is read.
                # Reading the last 4096 frames (about one FLAC block) costs ~0.1 ms and,
                # unlike seeking to the very last sample, never hits libFLAC's slow seeks.
                want = min(frames, FLAC_TAIL_FRAMES)
                try:
                    handle.seek(frames - want)
                    tail = handle.read(want, dtype="float32", always_2d=True)
                except (sf.LibsndfileError, RuntimeError):
                    tail = None
                if tail is None or len(tail) != want:
                    raise MediaError(
                        f"{name} is truncated or corrupt: its last FLAC frame cannot be read"
                    )
    except MediaError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, OSError):
        return None
    if rate <= 0 or channels <= 0 or frames < 0:
        return None
    return MediaInfo(
        media_type="audio",
        duration=frames / rate,
        sample_rate=rate,
        channels=channels,
        container=container,
        has_audio=True,
    )


# --- ffmpeg --------------------------------------------------------------------------------


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped with imageio-ffmpeg (or $IMAGEIO_FFMPEG_EXE)."""
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def ffmpeg_input(path: Path) -> str:
    """`path` as an ffmpeg input that is always a plain file (no protocol, no option)."""
    return "file:" + os.fspath(path.absolute())


_DURATION = re.compile(r"^\s*Duration:\s*(?:(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)|(N/A))")
_STREAM = re.compile(r"^\s*Stream #\d+:\d+\S*: (Video|Audio|Subtitle|Data|Attachment): (.*)$")
_AUDIO = re.compile(r"(\d+) Hz, ([^,]+)")
_LAYOUT_DIGITS = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")
_N_CHANNELS = re.compile(r"^(\d+) channels?\b")
_NAMED_LAYOUTS = {
    "mono": 1,
    "stereo": 2,
    "downmix": 2,
    "binaural": 2,
    "quad": 4,
    "hexagonal": 6,
    "octagonal": 8,
    "cube": 8,
    "hexadecagonal": 16,
}


def channels_from_layout(layout: str) -> int | None:
    """Channel count of an ffmpeg layout name: "mono" 1, "stereo" 2, "5.1(side)" 6,
    "7.1.4" 12, "3 channels" 3; None if unknown."""
    text = layout.strip().lower()
    match = _N_CHANNELS.match(text)
    if match:
        return int(match.group(1))
    match = _LAYOUT_DIGITS.match(text)
    if match:
        return sum(int(group) for group in match.groups() if group)
    base = text.split("(", 1)[0].strip()
    return _NAMED_LAYOUTS.get(base)


def _ffmpeg_reason(stderr: str) -> str:
    """The last meaningful line of ffmpeg's complaint, e.g. 'Invalid data found when...'."""
    for line in reversed(stderr.strip().splitlines()):
        line = line.strip()
        if line and not line.startswith("At least one output file"):
            return line.rsplit(": ", 1)[-1].strip().rstrip(".")
    return "no details"


def parse_ffmpeg_banner(stderr: str, name: str, container: str) -> MediaInfo:
    """MediaInfo from the stderr of ``ffmpeg -hide_banner -i FILE``; MediaError if none."""
    if "Input #0" not in stderr:
        raise MediaError(
            f"{name} is corrupt, truncated or not a media file (ffmpeg: {_ffmpeg_reason(stderr)})"
        )
    duration: float | None = None
    has_video = False
    sample_rate: int | None = None
    channels: int | None = None
    has_audio = False
    for line in stderr.splitlines():
        match = _DURATION.match(line)
        if match and duration is None and not match.group(4):
            hours, minutes, seconds = match.group(1, 2, 3)
            duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
            continue
        match = _STREAM.match(line)
        if not match:
            continue
        kind, detail = match.groups()
        if kind == "Video" and "(attached pic)" not in detail and "(thumbnail)" not in detail:
            has_video = True
        elif kind == "Audio" and not has_audio:
            has_audio = True
            audio = _AUDIO.search(detail)
            if audio:
                sample_rate = int(audio.group(1)) or None
                channels = channels_from_layout(audio.group(2))
    if not has_video and not has_audio:
        raise MediaError(f"{name} is not an audio or video file (it has no audio or video stream)")
    if duration is None:
        raise MediaError(f"{name} has no readable duration in its headers")
    return MediaInfo(
        media_type="video" if has_video else "audio",
        duration=duration,
        sample_rate=sample_rate,
        channels=channels,
        container=container,
        has_audio=has_audio,
    )


def _probe_ffmpeg(path: Path, container: str) -> MediaInfo:
    name = display_name(path)
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", ffmpeg_input(path)]
    try:
        completed = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise MediaError(f"{name} could not be probed within {PROBE_TIMEOUT_S:g} s") from None
    except OSError as exc:  # the environment, not the file: do not blame the record
        raise RuntimeError(f"could not start ffmpeg ({command[0]}): {exc}") from exc
    stderr = completed.stderr.decode("utf-8", errors="replace")
    return parse_ffmpeg_banner(stderr, name, container)


# --- Public --------------------------------------------------------------------------------


def probe(path: Path) -> MediaInfo:
    """Header facts of the audio/video file at `path`; never decodes the whole file.

    Raises `MediaError` (one sentence naming the file) if it is missing, empty, not a
    regular file, unreadable, not audio/video, truncated or corrupt.
    """
    name = display_name(path)
    size = _regular_file_size(path)
    if size == 0:
        raise MediaError(f"{name} is empty")
    head = _read_at(path, 0, HEAD_BYTES)
    if not head:
        raise MediaError(f"{name} is empty")
    container = _sniff(head, path)
    if container is None:
        raise MediaError(f"{name} is not an audio or video file (unrecognised content)")
    if container in SOUNDFILE_CONTAINERS:
        info = _probe_soundfile(path, container, head, size)
        if info is not None:
            return info
    return _probe_ffmpeg(path, container)
