"""What a media file is, from its headers and its packets: type, duration, rate, channels.

Nothing here decodes audio or video. Every duration comes from a source that cannot lie
for its format, and is checked against the data before it is returned:

1. `sniff_container` reads the first 4 KiB and recognises the container by its magic bytes
   (one table, `MAGIC`). Anything it does not recognise (text, images, archives, noise) is
   rejected here.
2. Containers libsndfile reads (WAV/RF64/W64, AIFF, AU, CAF, FLAC, Ogg, 8SVX, VOC, NIST,
   AVR) are opened with `soundfile`: ``frames / samplerate`` is a sample count. It is
   verified against the data: a PCM container whose data chunk declares more bytes than
   the file holds, a FLAC whose last frame cannot be read, or an Ogg stream whose last
   page is cut or is not the end of the stream, is reported as truncated.
3. Everything else (mp3, mp2, AAC, AC-3, m4a/MP4/MOV, Matroska/WebM, AVI, FLV, MPEG-TS,
   WavPack, ...) and anything libsndfile refuses is opened with PyAV (FFmpeg's own
   libraries, in process) and its packets are demuxed, not decoded:

   * where the container states a length (a Xing/Info/VBRI header in mp3, the mp4 index
     with its edit list, WavPack block headers, Matroska's Duration, ...), FFmpeg's
     stream duration is used at full precision, with the encoder delay and padding the
     file states (LAME tag, edit list, pre-skip) already taken off, and the packets must
     cover it: a file whose packets end before the stated length is truncated, one whose
     packets run on past it disagrees with its header; both fail.
   * raw elementary streams that state no length (mp3/mp2 without a Xing header, ADTS
     AAC, AC-3, DTS) are timed by counting their frames: packets x samples per frame.

The media type comes from the content, never from the file name: a video stream that is
not an attached picture (cover art) makes a file "video"; otherwise an audio stream makes
it "audio"; otherwise it is not media.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

import soundfile as sf
from pydantic import BaseModel, Field

from api.schemas import MediaType
from flows.compute.errors import MediaError, read_error, stat_regular_file

if TYPE_CHECKING:  # imported where first needed: `import av` costs ~0.2 s per process
    import av

#: Bytes read from the start of a file to recognise its container.
HEAD_BYTES = 4096
#: Bytes read from the end of an Ogg file to find its last page.
OGG_TAIL_BYTES = 65_536
#: Frames read from the end of a FLAC file to prove it is not truncated.
FLAC_TAIL_FRAMES = 4096
#: Containers libsndfile can read; they are tried with soundfile first.
SOUNDFILE_CONTAINERS = frozenset(
    {"wav", "w64", "aiff", "au", "caf", "flac", "ogg", "svx", "voc", "nist", "avr"}
)
#: Raw elementary streams with no stated length: timed by counting frames.
COUNTED_CONTAINERS = frozenset({"aac", "ac3", "dts", "mp3-noheader"})
#: Samples per frame of codecs whose frame size FFmpeg reports only after decoding.
FRAME_SIZES = {"ac3": 1536, "eac3": 1536, "dca": 512}
#: Bytes an mp3 may hold past the stream size its Xing header states (ID3v1, APE tags);
#: more, and the packets are read to see whether the header is stale.
MP3_TAIL_SLACK = 8192
#: How far a video's packets may end before its stated duration (the 0.1 s target).
VIDEO_TOLERANCE_S = 0.1
#: How far an audio stream's packets may end before its stated duration.
AUDIO_TOLERANCE_S = 0.001


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
    except OSError as exc:
        raise read_error(exc, name) from None


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


#: Magic bytes -> container: every (offset, bytes) of an entry must match; first entry wins.
MAGIC: tuple[tuple[str, tuple[tuple[int, bytes], ...]], ...] = (
    ("wav", ((0, b"RIFF"), (8, b"WAVE"))),
    ("wav", ((0, b"RIFX"), (8, b"WAVE"))),
    ("wav", ((0, b"RF64"), (8, b"WAVE"))),
    ("wav", ((0, b"BW64"), (8, b"WAVE"))),
    ("avi", ((0, b"RIFF"), (8, b"AVI "))),
    ("w64", ((0, b"riff"), (4, b"\x2e\x91\xcf\x11"))),  # Sony Wave64 GUID
    ("aiff", ((0, b"FORM"), (8, b"AIFF"))),
    ("aiff", ((0, b"FORM"), (8, b"AIFC"))),
    ("svx", ((0, b"FORM"), (8, b"8SVX"))),
    ("svx", ((0, b"FORM"), (8, b"16SV"))),
    ("voc", ((0, b"Creative Voice File\x1a"),)),
    ("nist", ((0, b"NIST_1A\n"),)),
    ("avr", ((0, b"2BIT"),)),
    ("flac", ((0, b"fLaC"),)),
    ("ogg", ((0, b"OggS"),)),
    ("mp4", ((4, b"ftyp"),)),
    *(("mov", ((4, atom),)) for atom in (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")),
    ("mkv", ((0, b"\x1a\x45\xdf\xa3"),)),  # EBML
    ("au", ((0, b".snd"),)),
    ("caf", ((0, b"caff"),)),
    ("flv", ((0, b"FLV"),)),
    ("asf", ((0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"),)),
    ("mpeg", ((0, b"\x00\x00\x01\xba"),)),
    ("mpeg", ((0, b"\x00\x00\x01\xb3"),)),
    ("mpegts", ((0, b"\x47"), (188, b"\x47"), (376, b"\x47"))),
    ("amr", ((0, b"#!AMR"),)),
    ("ape", ((0, b"MAC "),)),
    ("wavpack", ((0, b"wvpk"),)),
    ("tta", ((0, b"TTA1"),)),
    ("mpc", ((0, b"MPCK"),)),
    ("ac3", ((0, b"\x0b\x77"),)),
    ("dts", ((0, b"\x7f\xfe\x80\x01"),)),
)

_OGG_VIDEO_MARKERS = (b"\x80theora", b"OVP80", b"BBCD\x00")


def _refine(container: str, head: bytes) -> str:
    """Tell apart containers that share their magic bytes."""
    if container == "ogg" and any(marker in head for marker in _OGG_VIDEO_MARKERS):
        return "ogv"
    if container == "mp4" and head[8:12] == b"qt  ":
        return "mov"
    if container == "mkv" and b"webm" in head[:64]:
        return "webm"
    return container


def _after_id3(head: bytes, path: Path | None) -> tuple[int, bytes]:
    """(offset, first 4 bytes) of what follows an ID3v2 tag at the start of `head`."""
    size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
    offset = 10 + size + (10 if head[5] & 0x10 else 0)
    after = head[offset : offset + 4]
    if len(after) < 4 and path is not None:
        after = _read_at(path, offset, 4)
    return offset, after


def _sniff(head: bytes, path: Path | None = None) -> str | None:
    """Container name from the first bytes of a file, or None if it is not a media container.

    `path` is only needed to look past an ID3v2 tag (to tell mp3 from ID3-tagged flac).
    """
    if len(head) < 4:
        return None
    for container, marks in MAGIC:
        if all(head[at : at + len(magic)] == magic for at, magic in marks):
            return _refine(container, head)
    start = head[:4]
    if head[:3] == b"ID3" and len(head) >= 10:
        _, start = _after_id3(head, path)
        if start == b"fLaC":
            return "flac"
        if _is_adts_sync(start):
            return "aac"
        return "mp3"
    if _is_mpeg_audio_sync(start):
        return "mp3"
    if _is_adts_sync(start):
        return "aac"
    return None


def sniff_container(path: Path) -> str | None:
    """The container of `path` by its magic bytes ("wav", "flac", "ogg", "mp4", "mov", "mp3",
    "webm", "mkv", ...), or None if the content is not a recognised audio/video container.

    Raises `MediaError` if the file is missing, not a regular file or unreadable.
    """
    _regular_file_size(path)
    return _sniff(_read_at(path, 0, HEAD_BYTES), path)


def _seconds(value: float) -> str:
    return f"{value:.6g} s"


def _truncated(name: str, header: float, data: float) -> MediaError:
    return MediaError(
        f"{name} is truncated: header says {_seconds(header)}, data holds {_seconds(data)}"
    )


# --- Data chunks of PCM containers ------------------------------------------------------------

#: container -> (first chunk offset, id bytes, size bytes, byte order, size counts the
#: chunk header, alignment, data chunk ids)
_W64_DATA = b"data\xf3\xac\xd3\x11\x8c\xd1\x00\xc0\x4f\x8e\xdb\x8a"
_CHUNKS: dict[str, tuple[int, int, int, Literal["little", "big"], bool, int, tuple[bytes, ...]]] = {
    "wav": (12, 4, 4, "little", False, 2, (b"data",)),
    "aiff": (12, 4, 4, "big", False, 2, (b"SSND",)),
    "caf": (8, 4, 8, "big", False, 1, (b"data",)),
    "w64": (40, 16, 8, "little", True, 8, (_W64_DATA,)),
}
_UNKNOWN_SIZES = (0, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)


def _data_chunk(
    path: Path, container: str, head: bytes, size: int, want: tuple[bytes, ...] = ()
) -> tuple[int, int] | None:
    """(offset of the audio data, bytes its chunk declares) of a WAV/RF64/W64/AIFF/CAF file,
    or None if no data chunk or no definite size is found in the first chunks. `want`
    names another chunk to find instead (b"fmt ")."""
    first, id_len, size_len, order, inclusive, align, ids = _CHUNKS[container]
    ids = want or ids
    header = id_len + size_len
    ds64: int | None = None
    offset = first
    for _ in range(64):
        end = offset + header + 16
        chunk = head[offset:end] if end <= len(head) else _read_at(path, offset, header + 16)
        if len(chunk) < header:
            return None
        chunk_id = chunk[:id_len]
        declared = int.from_bytes(chunk[id_len:header], order, signed=container == "caf")
        if chunk_id == b"ds64" and len(chunk) >= header + 16:
            ds64 = int.from_bytes(chunk[header + 8 : header + 16], "little")
        if chunk_id in ids:
            if container == "wav" and declared == 0xFFFFFFFF and ds64 is not None:
                declared = ds64
            if declared < 0 or declared in _UNKNOWN_SIZES:
                return None
            body = declared - header if inclusive else declared
            return offset + header, body
        if declared < 0:
            return None
        step = declared if inclusive else header + declared
        offset += step + (-step % align)
        if offset >= size:
            return None
    return None


def _check_data_size(path: Path, container: str, head: bytes, size: int, seconds: float) -> None:
    """A PCM container whose data chunk declares more bytes than the file holds was cut."""
    if container not in _CHUNKS:
        return
    found = _data_chunk(path, container, head, size)
    if found is None:
        return
    start, declared = found
    present = max(0, size - start)
    if declared > present + 1 and present > 0:  # 1 byte of slack for a forgotten pad byte
        header = seconds * declared / present if seconds else 0.0
        if not seconds:
            raise MediaError(
                f"{display_name(path)} is truncated: its data chunk declares {declared} bytes "
                f"but the file holds {present}"
            )
        raise _truncated(display_name(path), header, seconds)


def _check_ogg_end(path: Path, size: int) -> None:
    """An Ogg file ends with a whole page that closes the stream (end-of-stream flag)."""
    name = display_name(path)
    offset = max(0, size - OGG_TAIL_BYTES)
    tail = _read_at(path, offset, OGG_TAIL_BYTES)
    at = tail.rfind(b"OggS")
    if at < 0 or len(tail) < at + 27:
        raise MediaError(f"{name} is truncated: no complete Ogg page at its end")
    segments = tail[at + 26]
    table = tail[at + 27 : at + 27 + segments]
    length = 27 + segments + sum(table)
    if len(table) < segments or at + length > len(tail):
        raise MediaError(f"{name} is truncated: its last Ogg page is cut short")
    if not tail[at + 5] & 0x04:
        raise MediaError(f"{name} is truncated: its last Ogg page does not end the stream")


def _check_riff_length(head: bytes, size: int, name: str) -> None:
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


# --- soundfile -----------------------------------------------------------------------------


def _probe_soundfile(path: Path, container: str, head: bytes, size: int) -> MediaInfo | None:
    """MediaInfo via libsndfile, None if libsndfile cannot read the file, MediaError if
    it reads it and finds it truncated."""
    name = display_name(path)
    if container == "ogg":
        _check_ogg_end(path, size)
    if container == "wav" and size < HEAD_BYTES:
        _check_riff_length(head, size, name)
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
    if container == "ogg" and frames == 0:
        return None  # libsndfile found no length: let FFmpeg count the packets
    return MediaInfo(
        media_type="audio",
        duration=frames / rate,
        sample_rate=rate,
        channels=channels,
        container=container,
        has_audio=True,
    )


# --- PyAV (FFmpeg's libraries) -----------------------------------------------------------------


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped with imageio-ffmpeg (or $IMAGEIO_FFMPEG_EXE)."""
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def ffmpeg_input(path: Path) -> str:
    """`path` as an ffmpeg input that is always a plain file (no protocol, no option)."""
    return "file:" + os.fspath(path.absolute())


def _av_reason(exc: BaseException) -> str:
    """FFmpeg's complaint without the file path: 'Invalid data found when processing input'."""
    text = getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(text).split()).rstrip(".") or type(exc).__name__


class _Mp3Header(NamedTuple):
    """What the first frame's Xing/Info or VBRI header states (None: not stated)."""

    frames: int | None
    stream_bytes: int | None
    offset: int  # of the first frame


def _mp3_length_header(path: Path, head: bytes) -> _Mp3Header | None:
    """The Xing/Info or VBRI header of the first MPEG audio frame, None if it has none."""
    offset = 0
    if head[:3] == b"ID3" and len(head) >= 10:
        offset, _ = _after_id3(head, path)
    frame = head[offset : offset + 200]
    if len(frame) < 200:
        frame = _read_at(path, offset, 200)
    for at in (13, 21, 36):  # after the side information of mono/stereo, MPEG-1/2
        if frame[at : at + 4] in (b"Xing", b"Info"):
            flags = int.from_bytes(frame[at + 4 : at + 8], "big")
            fields = [int.from_bytes(frame[i : i + 4], "big") for i in range(at + 8, at + 16, 4)]
            frames = fields.pop(0) if flags & 1 else None
            stream_bytes = fields.pop(0) if flags & 2 else None
            return _Mp3Header(frames or None, stream_bytes or None, offset)
    if frame[36:40] == b"VBRI":
        frames = int.from_bytes(frame[50:54], "big")
        return _Mp3Header(frames or None, int.from_bytes(frame[46:50], "big") or None, offset)
    return None


def _index_fits(streams: Sequence[av.stream.Stream], size: int) -> bool:
    """Whether every stream has a full index (mp4/mov) whose last byte lies in the file."""
    end = 0
    for stream in streams:
        entries = stream.index_entries
        if len(entries) == 0 or (stream.frames and len(entries) != stream.frames):
            return False
        end = max(end, max(entry.pos + entry.size for entry in entries))
    return 0 < end <= size


class _Span:
    """Packets seen of one stream: count, first timestamp, end of the last, longest one."""

    def __init__(self) -> None:
        self.count = 0
        self.first: int | None = None
        self.end: int | None = None
        self.longest = 0
        self.last_size = 0
        self.last_bytes = b""


def _demux(
    handle: av.container.InputContainer, streams: Sequence[av.stream.Stream], name: str
) -> dict[int, _Span]:
    """Reads (never decodes) every packet of `streams`."""
    import av

    spans = {stream.index: _Span() for stream in streams}
    last: dict[int, av.Packet[av.stream.Stream]] = {}
    try:
        for packet in handle.demux(streams):
            size = packet.size
            if size == 0:
                continue
            index = packet.stream_index
            span = spans[index]
            span.count += 1
            duration = packet.duration or 0
            if duration > span.longest:
                span.longest = duration
            last[index] = packet
            pts = packet.pts
            if pts is not None:
                if span.first is None or pts < span.first:
                    span.first = pts
                if span.end is None or pts + duration > span.end:
                    span.end = pts + duration
    except av.FFmpegError as exc:
        raise MediaError(
            f"{name} is truncated or corrupt: its packets cannot be read ({_av_reason(exc)})"
        ) from None
    for index, packet in last.items():
        spans[index].last_size = packet.size
        spans[index].last_bytes = bytes(packet)[:8]
    return spans


def _seconds_of(ticks: int | None, time_base: Fraction | None) -> float | None:
    return None if ticks is None or time_base is None else float(ticks * time_base)


def _adts_cut(span: _Span) -> bool:
    """Whether the last ADTS frame is shorter than its header says."""
    data = span.last_bytes
    if len(data) < 6 or not _is_adts_sync(data):
        return False
    length = ((data[3] & 0x03) << 11) | (data[4] << 3) | (data[5] >> 5)
    return length > span.last_size


#: FFmpeg demuxer for a sniffed container: opening with it skips FFmpeg's own probing
#: (about 3x faster for mp3); a file it refuses is opened again with probing.
AV_FORMATS = {
    "mp3": "mp3", "mp4": "mov", "mov": "mov", "aac": "aac", "ac3": "ac3", "wavpack": "wv",
    "mkv": "matroska", "webm": "matroska", "avi": "avi", "flv": "flv", "mpegts": "mpegts",
}  # fmt: skip


def _open_av(path: Path, container: str) -> av.container.InputContainer:
    import av

    hint = AV_FORMATS.get(container)
    if hint is not None:
        try:
            return av.open(os.fspath(path), format=hint, metadata_errors="ignore")
        except av.FFmpegError:
            pass
    return av.open(os.fspath(path), metadata_errors="ignore")


def _probe_av(path: Path, container: str, head: bytes, size: int) -> MediaInfo:
    import av

    name = display_name(path)
    try:
        handle = _open_av(path, container)
    except av.FFmpegError as exc:
        raise MediaError(
            f"{name} is corrupt, truncated or not a media file ({container} by its content; "
            f"FFmpeg: {_av_reason(exc)})"
        ) from None
    with handle:
        pictures = [
            s
            for s in handle.streams.video
            if not s.disposition & (av.stream.Disposition.attached_pic)
        ]
        audio = list(handle.streams.audio)
        if not pictures and not audio:
            raise MediaError(
                f"{name} is not an audio or video file ({container} by its content, "
                "but it has no audio or video stream)"
            )
        header = handle.duration / 1_000_000 if handle.duration else None
        context = audio[0].codec_context if audio else None
        if audio and context is None:
            if container == "wav":
                return _probe_undecodable_wav(path, head)
            raise MediaError(f"{name} has audio in a codec FFmpeg cannot decode")
        rate = context.sample_rate if context else None
        channels = context.layout.nb_channels if context else None
        streams = pictures + audio if pictures else audio[:1]
        # The stated length is verified without reading the packets where the file's size
        # can prove it: an mp4 index whose last sample lies in the file, an mp3 header whose
        # stated stream size the file holds. Otherwise every packet is read (not decoded).
        verified = False
        mp3: _Mp3Header | None = None
        if container in ("mp4", "mov"):
            verified = _index_fits(streams, size)
        elif container == "mp3":
            mp3 = _mp3_length_header(path, head)
            if mp3 is None:
                container = "mp3-noheader"
            elif mp3.stream_bytes and 0 <= size - mp3.offset - mp3.stream_bytes <= MP3_TAIL_SLACK:
                verified = True
        spans = {} if verified else _demux(handle, streams, name)
        if pictures:
            duration = _video_duration(name, streams, spans, header, verified)
        else:
            stream = audio[0]
            span = spans.get(stream.index)
            if container == "mp3" and not verified and mp3 is not None and span is not None:
                _check_mp3_frames(name, stream, span, mp3)
            duration = _audio_duration(name, stream, span, header, container, verified)
    return MediaInfo(
        media_type="video" if pictures else "audio",
        duration=duration,
        sample_rate=rate or None,
        channels=channels or None,
        container=container.removesuffix("-noheader"),
        has_audio=bool(audio),
    )


def _check_mp3_frames(
    name: str, stream: av.audio.stream.AudioStream, span: _Span, mp3: _Mp3Header
) -> None:
    """The frames an mp3's Xing/VBRI header states against the frames demuxed."""
    rate, frame_size = stream.codec_context.sample_rate, stream.codec_context.frame_size
    if not mp3.frames or not rate or not frame_size or abs(span.count - mp3.frames) <= 1:
        return
    stated, data = mp3.frames * frame_size / rate, span.count * frame_size / rate
    # Say it in decoded seconds where FFmpeg took the LAME delay and padding off.
    base = stream.time_base
    decoded = float(stream.duration * base) if stream.duration and base else None
    trimmed = stated - decoded if decoded is not None else -1.0
    if 0 <= trimmed <= 2 * frame_size / rate:
        stated, data = stated - trimmed, max(0.0, data - trimmed)
    if span.count < mp3.frames:
        raise _truncated(name, stated, data)
    raise MediaError(
        f"{name} disagrees with its header: header says {_seconds(stated)}, "
        f"data holds {_seconds(data)}"
    )


def _audio_duration(
    name: str, stream: av.audio.stream.AudioStream, span: _Span | None, header: float | None,
    container: str, verified: bool,
) -> float:  # fmt: skip
    if verified and stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if span is None or span.count == 0:
        raise MediaError(f"{name} holds no audio packets")
    rate = stream.codec_context.sample_rate
    frame_size = stream.codec_context.frame_size or FRAME_SIZES.get(stream.codec_context.name, 0)
    base = stream.time_base
    if container in COUNTED_CONTAINERS and rate and frame_size:
        if _adts_cut(span):
            raise MediaError(f"{name} is truncated: its last ADTS frame is cut short")
        return span.count * frame_size / rate
    stated = _seconds_of(stream.duration, base) if stream.duration else header
    start, end = _seconds_of(span.first, base), _seconds_of(span.end, base)
    data = end - start if start is not None and end is not None else None
    if stated is None:
        if data is None or data <= 0:
            raise MediaError(f"{name} states no duration and its packets carry no timestamps")
        return data
    if data is None:
        raise MediaError(f"{name} has audio packets without timestamps; its length is unverified")
    tick = float(base) if base else 0.0
    short = AUDIO_TOLERANCE_S + 2 * tick
    # Packets hold the encoder delay and padding the header takes off: up to two packets.
    longest = _seconds_of(span.longest, base) or 0.0
    if data < stated - short:
        raise _truncated(name, stated, data)
    if data > stated + 2 * longest + short:
        raise MediaError(
            f"{name} disagrees with its header: header says {_seconds(stated)}, "
            f"data holds {_seconds(data)}"
        )
    return stated


def _video_duration(
    name: str,
    streams: Sequence[av.stream.Stream],
    spans: dict[int, _Span],
    header: float | None,
    verified: bool,
) -> float:
    if verified and header:
        return header
    starts: list[float] = []
    ends: list[float] = []
    for stream in streams:
        span = spans.get(stream.index)
        start = _seconds_of(span.first, stream.time_base) if span else None
        end = _seconds_of(span.end, stream.time_base) if span else None
        if start is not None and end is not None:
            starts.append(start)
            ends.append(end)
    if not ends:
        raise MediaError(f"{name} holds no audio or video packets")
    data = max(ends) - max(0.0, min(starts)) if min(starts) > 0 else max(ends) - min(starts)
    if header is None:
        return data
    if data < header - VIDEO_TOLERANCE_S:
        raise _truncated(name, header, data)
    if data > header + 2 * VIDEO_TOLERANCE_S:
        raise MediaError(
            f"{name} disagrees with its header: header says {_seconds(header)}, "
            f"data holds {_seconds(data)}"
        )
    return header


def wav_sample_format(path: Path) -> str:
    """The sample format a WAV's fmt chunk states: "36-bit PCM in 5-byte samples"."""
    head = _read_at(path, 0, HEAD_BYTES)
    fmt = _data_chunk(path, "wav", head, _regular_file_size(path), (b"fmt ",))
    body = _read_at(path, fmt[0], 24) if fmt else b""
    if len(body) < 16:
        return "no readable fmt chunk"
    tag = int.from_bytes(body[0:2], "little")
    width = int.from_bytes(body[14:16], "little")
    valid = int.from_bytes(body[18:20], "little") if tag == 0xFFFE and len(body) >= 20 else 0
    kind = "PCM" if tag in (1, 0xFFFE) else f"format tag 0x{tag:04x}"
    return f"{valid or width}-bit {kind} in {(width + 7) // 8}-byte samples"


def _probe_undecodable_wav(path: Path, head: bytes) -> MediaInfo:
    """A WAV in a sample format neither libsndfile nor FFmpeg decodes (e.g. 36-bit PCM in
    5-byte containers): its length is still a sample count, data bytes / block size,
    verified against the file's size."""
    name = display_name(path)
    size = _regular_file_size(path)
    fmt = _data_chunk(path, "wav", head, size, (b"fmt ",))
    data = _data_chunk(path, "wav", head, size)
    body = _read_at(path, fmt[0], 16) if fmt else b""
    if fmt is None or data is None or len(body) < 16:
        raise MediaError(f"{name} is a WAV file without a readable fmt or data chunk")
    channels = int.from_bytes(body[2:4], "little")
    rate = int.from_bytes(body[4:8], "little")
    block = int.from_bytes(body[12:14], "little")
    if not channels or not rate or not block:
        raise MediaError(f"{name} is a WAV file whose fmt chunk states no rate or block size")
    start, declared = data
    if declared > size - start + 1:
        raise _truncated(name, declared // block / rate, (size - start) // block / rate)
    return MediaInfo(
        media_type="audio",
        duration=declared // block / rate,
        sample_rate=rate,
        channels=channels,
        container="wav",
        has_audio=True,
    )


# --- Public --------------------------------------------------------------------------------


def probe(path: Path) -> MediaInfo:
    """Header facts of the audio/video file at `path`, verified against its data; never
    decodes.

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
    info = None
    if container in SOUNDFILE_CONTAINERS:
        info = _probe_soundfile(path, container, head, size)
    if info is None:
        info = _probe_av(path, container, head, size)
    _check_data_size(path, container, head, size, info.duration)
    return info
