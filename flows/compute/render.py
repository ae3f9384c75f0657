"""Render one clip-compile project into one H.264/AAC MP4 plus a JPEG poster.

Pure compute: local files in, local files out. No Prefect, no HTTP, no database.

The timeline is: intro, each clip cut to ``[start, end]`` with the transition between
consecutive clips, then outro. Every segment is scaled to one even output size; audio is
kept and stays aligned (a segment without audio contributes silence). Frames are streamed
through moviepy, never held in memory, and every source clip is closed afterwards so no
ffmpeg process outlives the call.

Writes are atomic: the video and the thumbnail are encoded to hidden ``.…part.mp4`` /
``.…part.jpg`` files in the output directory, fsynced, then ``os.replace``-d onto names
derived from ``name_stem`` and a content key. A retried render therefore overwrites the
same two files and never leaves a half file or a second copy. Any failure is a
`MediaError` with a one-line reason, and the temporary files are removed. A render that is
killed cannot remove them: it holds a lock on its ``.part.mp4`` while it lives, and
`sweep_parts` (each clip-compile run, at its start) removes the files of unlocked renders.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal

import imageio_ffmpeg
import numpy as np
from moviepy import AudioClip, CompositeVideoClip, VideoClip, VideoFileClip, concatenate_videoclips
from moviepy.video.io.ffmpeg_reader import ffmpeg_parse_infos
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator

from flows.compute.errors import MediaError
from flows.compute.leftovers import GRACE_SECONDS, claim, sweep

#: The compute version of clip-compile (stored beside each value it makes): bump it when
#: results change (coverage counts records per version; this kind takes no stale mode).
COMPUTE_VERSION = 1

#: ffmpeg prints container durations with 10 ms resolution; a span may overshoot by this.
SPAN_TOLERANCE_S = 0.02
#: Sample rate of the output audio track (moviepy decodes every source to stereo at this rate).
AUDIO_FPS = 44_100
#: x264 speed/size trade-off; the outputs are previews, so favour speed.
X264_PRESET = "veryfast"
#: Poster frame time: 1 s in, or the middle of shorter videos.
THUMBNAIL_AT_S = 1.0
#: Seconds one ffmpeg helper call (thumbnail) may take before we give up.
FFMPEG_TIMEOUT_S = 120.0

_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")

Role = Literal["intro", "clip", "transition", "outro"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RenderClip(_Model):
    """One cut of a source video: seconds ``start`` to ``end``."""

    path: Path
    start: float = Field(ge=0, allow_inf_nan=False)
    end: float = Field(gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _check_span(self) -> RenderClip:
        if self.end <= self.start:
            raise ValueError("end must be greater than start")
        return self


class RenderPlan(_Model):
    """Everything one render needs. ``height`` is the target height, already capped.

    ``content_key`` names the output (``<name_stem>-<content_key>.mp4``); pass something
    stable for the job (a retried render must reuse it). If omitted, `plan_key` is used.
    """

    clips: list[RenderClip]
    intro: Path | None = None
    outro: Path | None = None
    transition: Path | None = None
    height: int | None = Field(default=None, ge=2, le=4320)
    fps: float = Field(gt=0, le=120, allow_inf_nan=False)
    output_dir: Path
    name_stem: str = Field(min_length=1, max_length=200)
    content_key: str | None = Field(default=None, pattern=_KEY.pattern)


class MediaInfo(_Model):
    """What the ffmpeg header says about a video file."""

    duration: float
    width: int
    height: int
    fps: float | None
    has_audio: bool


class Segment(_Model):
    """One piece of the timeline: ``path`` from ``start`` to ``end`` seconds."""

    role: Role
    path: Path
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


class Timeline(_Model):
    """A validated plan: the segments in order, the output size and the total length."""

    segments: list[Segment]
    width: int
    height: int
    fps: float
    duration: float
    has_audio: bool


class RenderOutput(_Model):
    """The published files and their facts; ``duration`` is read back from the output."""

    path: Path
    thumbnail: Path
    duration: float
    sha256: str
    size_bytes: int
    elapsed_seconds: float


# --- Pure helpers ----------------------------------------------------------------------------


def timeline_seconds(
    spans: Iterable[float], *, intro: float = 0.0, outro: float = 0.0, transition: float = 0.0
) -> float:
    """Length of intro + clips (with ``transition`` between consecutive ones) + outro."""
    spans = list(spans)
    gaps = max(len(spans) - 1, 0)
    return intro + sum(spans) + gaps * transition + outro


def expected_duration(plan: RenderPlan, durations: Mapping[Path, float]) -> float:
    """Seconds the rendered video will last, for a quota check before rendering.

    ``durations`` maps the intro/outro/transition paths to their media durations (clip
    spans come from the plan). A needed duration that is missing raises `MediaError`.
    """

    def length(path: Path | None) -> float:
        if path is None:
            return 0.0
        if path not in durations:
            raise MediaError(f"no known duration for {path.name}")
        return durations[path]

    return timeline_seconds(
        (clip.end - clip.start for clip in plan.clips),
        intro=length(plan.intro),
        outro=length(plan.outro),
        transition=length(plan.transition) if len(plan.clips) > 1 else 0.0,
    )


def cap_height(
    src_w: int, src_h: int, max_height: int, requested: int | None = None
) -> tuple[int, int]:
    """Output ``(width, height)``: ``requested`` (or the source height) capped at
    ``max_height``, aspect ratio kept, both even (H.264 4:2:0 needs it) and at least 2."""
    if src_w <= 0 or src_h <= 0 or max_height <= 0:
        raise ValueError("sizes must be positive")
    height = min(requested or src_h, max_height)
    height = max(2, height - height % 2)
    width = max(2, 2 * round(src_w * height / src_h / 2))
    return width, height


def plan_key(plan: RenderPlan) -> str:
    """A 16-hex key of what the render depends on (sources, spans, size, fps)."""
    spec = {
        "clips": [[str(c.path), c.start, c.end] for c in plan.clips],
        "intro": str(plan.intro) if plan.intro else None,
        "outro": str(plan.outro) if plan.outro else None,
        "transition": str(plan.transition) if plan.transition else None,
        "height": plan.height,
        "fps": plan.fps,
    }
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def output_names(plan: RenderPlan) -> tuple[str, str]:
    """The final file names ``(video, thumbnail)`` for a plan."""
    stem = _UNSAFE.sub("-", plan.name_stem).strip("-.") or "render"
    key = plan.content_key or plan_key(plan)
    base = f"{stem[:100]}-{key}"
    return f"{base}.mp4", f"{base}.jpg"


def probe_media(path: Path) -> MediaInfo:
    """Read a video's duration, size, fps and audio presence from its ffmpeg header."""
    if not path.is_file():
        raise MediaError(f"media file not found: {path}")
    try:
        infos: dict[str, Any] = ffmpeg_parse_infos(str(path))
    except Exception as exc:  # moviepy raises bare OSError/IndexError/... on bad files
        raise MediaError(f"cannot read {path.name}: {_one_line(exc)}") from exc
    duration = infos.get("duration")
    size = infos.get("video_size")
    if not infos.get("video_found") or not size:
        raise MediaError(f"{path.name} has no video stream")
    if not duration or duration <= 0:
        raise MediaError(f"{path.name} has no duration")
    width, height = int(size[0]), int(size[1])
    if abs(infos.get("video_rotation", 0)) in (90, 270):  # frames are decoded upright
        width, height = height, width
    return MediaInfo(
        duration=float(duration),
        width=width,
        height=height,
        fps=infos.get("video_fps"),
        has_audio=bool(infos.get("audio_found")),
    )


def plan_timeline(
    plan: RenderPlan, *, probe: Callable[[Path], MediaInfo] = probe_media
) -> Timeline:
    """Validate a plan against its media (cheap: headers only) and lay out the timeline.

    Raises `MediaError` for no clips, a missing or unreadable file, or a clip span outside
    its media. ``probe`` (path -> `MediaInfo`) is injectable for tests.
    """
    if not plan.clips:
        raise MediaError("project has no clips")
    infos: dict[Path, MediaInfo] = {}

    def info(path: Path) -> MediaInfo:
        if path not in infos:
            infos[path] = probe(path)
        return infos[path]

    clips: list[Segment] = []
    for number, clip in enumerate(plan.clips, start=1):
        media = info(clip.path)
        if clip.start >= media.duration or clip.end > media.duration + SPAN_TOLERANCE_S:
            raise MediaError(
                f"clip {number} span [{clip.start:g}, {clip.end:g}] s is outside "
                f"{clip.path.name} ({media.duration:g} s long)"
            )
        end = min(clip.end, media.duration)
        clips.append(Segment(role="clip", path=clip.path, start=clip.start, end=end))

    def whole(role: Role, path: Path) -> Segment:
        return Segment(role=role, path=path, start=0.0, end=info(path).duration)

    segments: list[Segment] = []
    if plan.intro is not None:
        segments.append(whole("intro", plan.intro))
    for index, segment in enumerate(clips):
        if index and plan.transition is not None:
            segments.append(whole("transition", plan.transition))
        segments.append(segment)
    if plan.outro is not None:
        segments.append(whole("outro", plan.outro))

    first = info(plan.clips[0].path)
    width, height = cap_height(first.width, first.height, plan.height or first.height, plan.height)
    return Timeline(
        segments=segments,
        width=width,
        height=height,
        fps=plan.fps,
        duration=sum(s.duration for s in segments),
        has_audio=any(info(s.path).has_audio for s in segments),
    )


# --- Rendering -------------------------------------------------------------------------------

#: A render's temporary files: ``.<name>.<token>.part.<ext>``, one token per render.
PART_PATTERN = ".*.part.*"


def _part_token(path: Path) -> str:
    return path.name.rsplit(".part.", 1)[0].rsplit(".", 1)[-1]


def sweep_parts(output_dir: Path, *, grace: float = GRACE_SECONDS) -> list[Path]:
    """Remove the temporary files of renders that died (killed, crashed); keep live ones.

    A live render holds a lock on its ``.part.mp4``; files of a token with no lock, older
    than ``grace`` seconds, are leftovers."""
    return sweep(output_dir, PART_PATTERN, _part_token, grace=grace)


def render(plan: RenderPlan, *, threads: int | None = None) -> RenderOutput:
    """Render ``plan`` to ``output_dir``; returns the published video and thumbnail.

    ``threads`` is passed to the x264 encoder (default: up to 2).
    """
    started = time.perf_counter()
    timeline = plan_timeline(plan)
    video_name, thumb_name = output_names(plan)
    final = plan.output_dir / video_name
    thumb = plan.output_dir / thumb_name
    token = uuid.uuid4().hex[:12]
    stack = ExitStack()
    part_video = plan.output_dir / f".{video_name}.{token}.part.mp4"
    part_audio = plan.output_dir / f".{video_name}.{token}.part.m4a"
    part_thumb = plan.output_dir / f".{thumb_name}.{token}.part.jpg"
    try:
        plan.output_dir.mkdir(parents=True, exist_ok=True)
        # Locked while this render lives: `sweep_parts` in a later run knows it from a
        # leftover of a killed one. ffmpeg rewrites the file in place (same inode, same lock).
        stack.enter_context(claim(part_video))
        _encode(timeline, part_video, part_audio, threads or min(2, os.cpu_count() or 1))
        _fsync(part_video)
        written = probe_media(part_video)
        _write_thumbnail(part_video, part_thumb, at=min(THUMBNAIL_AT_S, written.duration / 2))
        _fsync(part_thumb)
        digest = _sha256(part_video)
        size = part_video.stat().st_size
        os.replace(part_thumb, thumb)
        os.replace(part_video, final)
        _fsync(plan.output_dir)
    except MediaError:
        raise
    except Exception as exc:  # moviepy/ffmpeg raise OSError, ValueError, IndexError...
        raise MediaError(f"render failed: {_one_line(exc)}") from exc
    finally:
        for leftover in (part_video, part_audio, part_thumb):
            leftover.unlink(missing_ok=True)
        stack.close()
    return RenderOutput(
        path=final,
        thumbnail=thumb,
        duration=written.duration,
        sha256=digest,
        size_bytes=size,
        elapsed_seconds=time.perf_counter() - started,
    )


def _encode(timeline: Timeline, target: Path, temp_audio: Path, threads: int) -> None:
    """Stream the timeline through moviepy into ``target`` (H.264 + AAC)."""
    size = (timeline.width, timeline.height)
    with ExitStack() as stack:
        sources: dict[Path, VideoFileClip] = {}
        parts: list[VideoClip] = []
        for segment in timeline.segments:
            if segment.path not in sources:
                source = VideoFileClip(str(segment.path), audio=timeline.has_audio)
                stack.callback(source.close)
                sources[segment.path] = source
            source = sources[segment.path]
            part = source.subclipped(segment.start, min(segment.end, source.duration))
            part = _fit(part, size)
            if timeline.has_audio and part.audio is None:
                part = part.with_audio(_silence(part.duration))
            parts.append(part)
        video = concatenate_videoclips(parts, method="chain")
        stack.callback(video.close)
        video.write_videofile(
            str(target),
            fps=timeline.fps,
            codec="libx264",
            audio=timeline.has_audio,
            audio_codec="aac",
            audio_fps=AUDIO_FPS,
            temp_audiofile=str(temp_audio),
            preset=X264_PRESET,
            threads=threads,
            logger=None,
        )


def _fit(clip: VideoClip, size: tuple[int, int]) -> VideoClip:
    """Scale ``clip`` to ``size``; letterbox it on black if its aspect ratio differs."""
    width, height = size
    src_w, src_h = clip.size
    scale = min(width / src_w, height / src_h)
    fit_w, fit_h = round(src_w * scale), round(src_h * scale)
    if abs(fit_w - width) <= 2 and abs(fit_h - height) <= 2:
        return clip if (src_w, src_h) == size else clip.resized(new_size=size)
    inner = clip.resized(new_size=(max(fit_w, 1), max(fit_h, 1))).with_position("center")
    boxed: VideoClip = CompositeVideoClip([inner], size=size, bg_color=(0, 0, 0))
    return boxed.with_duration(clip.duration)


def _silence(duration: float) -> AudioClip:
    """Stereo silence, the same layout moviepy decodes file audio to."""

    def frame(t: float | NDArray[np.float64]) -> NDArray[np.float64]:
        return np.zeros((len(t), 2)) if isinstance(t, np.ndarray) else np.zeros(2)

    return AudioClip(frame, duration=duration, fps=AUDIO_FPS)


def _write_thumbnail(video: Path, target: Path, *, at: float) -> None:
    """Write the frame at ``at`` seconds of ``video`` as a JPEG (one ffmpeg call)."""
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-nostdin",
        "-v",
        "error",
        "-y",
        "-ss",
        f"{max(at, 0.0):.3f}",
        "-i",
        str(video),
        "-frames:v",
        "1",
        "-update",
        "1",
        "-q:v",
        "3",
        "-f",
        "image2",
        "-c:v",
        "mjpeg",
        str(target),
    ]
    done = subprocess.run(command, capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False)
    if done.returncode != 0 or not target.is_file() or target.stat().st_size == 0:
        raise MediaError(f"thumbnail failed: {_one_line(done.stderr.decode(errors='replace'))}")


def _fsync(path: Path) -> None:
    """Flush a file (or a directory entry list) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _one_line(error: BaseException | str) -> str:
    """A short single-line reason: the first and last non-empty lines of a message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__ if isinstance(error, BaseException) else "unknown error"
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return text if len(text) <= 500 else text[:497] + "..."


__all__ = [
    "MediaInfo",
    "RenderClip",
    "RenderOutput",
    "RenderPlan",
    "Segment",
    "Timeline",
    "cap_height",
    "expected_duration",
    "output_names",
    "plan_key",
    "plan_timeline",
    "probe_media",
    "render",
    "timeline_seconds",
]
