"""Render tiny real videos (64x48, 10 fps, tone audio) and check the output."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from flows.compute import render as render_module
from flows.compute.errors import MediaError
from flows.compute.render import (
    RenderClip,
    RenderPlan,
    cap_height,
    expected_duration,
    output_names,
    plan_timeline,
    probe_media,
    render,
)
from tests.media import count_frames, decode_audio, rms, write_video

FPS = 10.0
RATE = 16_000


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Source videos: two tones, one without audio, a square one, a short transition."""
    root = tmp_path_factory.mktemp("sources")
    specs: dict[str, dict[str, object]] = {
        "a440": {"seconds": 1.5, "freq": 440.0},
        "b880": {"seconds": 1.0, "freq": 880.0},
        "mute": {"seconds": 1.0, "with_audio": False},
        "square": {"seconds": 1.0, "size": (48, 48), "freq": 660.0},
        "swipe": {"seconds": 0.5, "freq": 220.0},
    }
    paths = {}
    for name, spec in specs.items():
        paths[name] = root / f"{name}.mp4"
        write_video(paths[name], **spec)  # type: ignore[arg-type]
    return paths


def make_plan(out: Path, clips: list[tuple[Path, float, float]], **extra: object) -> RenderPlan:
    return RenderPlan(
        clips=[RenderClip(path=p, start=s, end=e) for p, s, e in clips],
        fps=FPS,
        output_dir=out,
        name_stem="project 7",
        content_key="rev3",
        **extra,
    )


def names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def child_pids() -> list[int]:
    """Live child processes of this test process (via /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid() and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


def dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / RATE)[int(np.argmax(spectrum))])


# --- Pure helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "max_height", "requested", "want"),
    [
        ((64, 48), 32, None, (42, 32)),
        ((64, 48), 480, None, (64, 48)),
        ((64, 48), 480, 24, (32, 24)),
        ((64, 48), 20, 24, (26, 20)),
        ((1920, 1080), 720, None, (1280, 720)),
        ((100, 75), 33, None, (42, 32)),
        ((640, 480), 1, None, (2, 2)),
    ],
)
def test_cap_height_keeps_aspect_with_even_dims(
    src: tuple[int, int], max_height: int, requested: int | None, want: tuple[int, int]
) -> None:
    width, height = cap_height(*src, max_height, requested)
    assert (width, height) == want
    assert width % 2 == 0 and height % 2 == 0


def test_expected_duration_sums_intro_clips_transitions_outro(tmp_path: Path) -> None:
    intro, outro, swipe, clip = (tmp_path / n for n in ("i.mp4", "o.mp4", "t.mp4", "c.mp4"))
    durations = {intro: 2.0, outro: 3.0, swipe: 0.5}
    plan = make_plan(
        tmp_path,
        [(clip, 0, 1), (clip, 1, 1.5), (clip, 0, 2)],
        intro=intro,
        outro=outro,
        transition=swipe,
    )
    assert expected_duration(plan, durations) == pytest.approx(2 + 3.5 + 2 * 0.5 + 3)
    single = make_plan(tmp_path, [(clip, 0, 1)], transition=swipe)
    assert expected_duration(single, durations) == pytest.approx(1.0)
    with pytest.raises(MediaError, match="no known duration"):
        expected_duration(make_plan(tmp_path, [(clip, 0, 1)], intro=clip), durations)


def test_output_names_are_stable_and_safe(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, [(tmp_path / "x.mp4", 0, 1)])
    assert output_names(plan) == ("project-7-rev3.mp4", "project-7-rev3.jpg")
    keyless = plan.model_copy(update={"content_key": None, "name_stem": "../a b"})
    video, _ = output_names(keyless)
    assert video == output_names(keyless)[0] and "/" not in video and not video.startswith(".")


# --- Validation ------------------------------------------------------------------------------


def test_plan_rejects_bad_projects(media: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="no clips"):
        plan_timeline(make_plan(tmp_path, []))
    with pytest.raises(MediaError, match="not found"):
        plan_timeline(make_plan(tmp_path, [(tmp_path / "gone.mp4", 0, 1)]))
    with pytest.raises(MediaError, match=r"clip 2 span \[0.5, 3\] s is outside b880.mp4"):
        plan_timeline(make_plan(tmp_path, [(media["a440"], 0, 1), (media["b880"], 0.5, 3)]))
    with pytest.raises(MediaError, match="outside"):
        plan_timeline(make_plan(tmp_path, [(media["b880"], 1.2, 1.4)]))
    text = tmp_path / "text.mp4"
    text.write_text("not a video\n")
    with pytest.raises(MediaError, match="text.mp4"):
        plan_timeline(make_plan(tmp_path, [(text, 0, 1)]))
    with pytest.raises(MediaError, match="intro.mp4"):
        plan_timeline(make_plan(tmp_path, [(media["a440"], 0, 1)], intro=tmp_path / "intro.mp4"))
    with pytest.raises(MediaError):
        render(make_plan(tmp_path / "out", [(media["a440"], 1.0, 2.0)]))
    assert not (tmp_path / "out").exists()


def full_plan(media: dict[str, Path], tmp_path: Path, outro: str) -> RenderPlan:
    """Two clips (the first cut to 0.2-1.0 s) between an intro, a transition and `outro`."""
    return make_plan(
        tmp_path,
        [(media["a440"], 0.2, 1.0), (media["b880"], 0, 1)],
        intro=media["b880"],
        transition=media["swipe"],
        outro=media[outro],
        height=32,
    )


def test_plan_timeline_lays_out_segments(media: dict[str, Path], tmp_path: Path) -> None:
    plan = full_plan(media, tmp_path, outro="mute")
    timeline = plan_timeline(plan)
    assert [s.role for s in timeline.segments] == ["intro", "clip", "transition", "clip", "outro"]
    assert (timeline.width, timeline.height) == (42, 32)
    assert timeline.duration == pytest.approx(1.0 + 0.8 + 0.5 + 1.0 + 1.0)
    durations = {p: probe_media(p).duration for p in media.values()}
    assert expected_duration(plan, durations) == pytest.approx(timeline.duration)


# --- Rendering -------------------------------------------------------------------------------


def test_render_full_timeline(media: dict[str, Path], tmp_path: Path) -> None:
    plan = full_plan(media, tmp_path, outro="a440")
    before = set(child_pids())  # a session may hold other children (servers, pools)
    timeline = plan_timeline(plan)
    out = render(plan)

    assert out.path == tmp_path / "project-7-rev3.mp4"
    assert abs(count_frames(out.path) / FPS - timeline.duration) <= 1 / FPS
    assert abs(out.duration - timeline.duration) <= 1 / FPS
    info = probe_media(out.path)
    assert (info.width, info.height) == (42, 32)
    assert info.has_audio
    samples = decode_audio(out.path, rate=RATE)
    assert abs(len(samples) / RATE - timeline.duration) <= 1 / FPS
    assert rms(samples) > 0.05
    data = out.path.read_bytes()
    assert out.sha256 == hashlib.sha256(data).hexdigest()
    assert out.size_bytes == len(data)
    assert out.thumbnail.read_bytes()[:3] == b"\xff\xd8\xff"  # a JPEG
    assert names(tmp_path) == {out.path.name, out.thumbnail.name}  # no .part leftovers
    assert set(child_pids()) <= before, "an ffmpeg process outlived the render"


def test_audio_stays_aligned_across_a_silent_clip(media: dict[str, Path], tmp_path: Path) -> None:
    clips = [(media["a440"], 0.0, 1.0), (media["mute"], 0.0, 1.0), (media["b880"], 0.0, 1.0)]
    out = render(make_plan(tmp_path, clips))
    samples = decode_audio(out.path, rate=RATE)
    first, middle, last = (samples[int(t * RATE) : int((t + 0.8) * RATE)] for t in (0.1, 1.1, 2.1))
    assert rms(first) > 0.1 and rms(last) > 0.1
    assert rms(middle) < 0.01
    assert dominant_hz(first) == pytest.approx(440, abs=10)
    assert dominant_hz(last) == pytest.approx(880, abs=10)


def test_render_letterboxes_other_aspect_ratios(media: dict[str, Path], tmp_path: Path) -> None:
    out = render(make_plan(tmp_path, [(media["a440"], 0, 0.5), (media["square"], 0, 0.5)]))
    info = probe_media(out.path)
    assert (info.width, info.height) == (64, 48)
    assert count_frames(out.path) == 10


def test_retry_overwrites_one_output(media: dict[str, Path], tmp_path: Path) -> None:
    plan = make_plan(tmp_path, [(media["b880"], 0, 0.5)])
    first = render(plan)
    second = render(plan)
    assert second.path == first.path and second.thumbnail == first.thumbnail
    assert names(tmp_path) == {first.path.name, first.thumbnail.name}
    assert second.sha256 == hashlib.sha256(second.path.read_bytes()).hexdigest()


def test_failed_render_leaves_nothing(
    media: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(timeline: object, target: Path, temp_audio: Path, threads: int) -> None:
        target.write_bytes(b"half a video")
        temp_audio.write_bytes(b"half the audio")
        raise OSError("ffmpeg died\n\nwith a long story")

    monkeypatch.setattr(render_module, "_encode", broken)
    with pytest.raises(MediaError, match=r"^render failed: ffmpeg died \.\.\. with a long story$"):
        render(make_plan(tmp_path, [(media["b880"], 0, 0.5)]))
    assert names(tmp_path) == set()
