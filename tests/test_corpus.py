"""The sample corpus: its manifest tells the truth about the files, and it is deterministic."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from api.schemas import MediaIn
from flows.compute.errors import MediaError
from flows.compute.render import RenderClip, RenderPlan, expected_duration, probe_media
from ops.corpus import Manifest, load_manifest, make_sample_corpus
from tests.media import decode_audio


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    root = tmp_path_factory.mktemp("corpus")
    return root, make_sample_corpus(root)


def measured_snr(samples: np.ndarray, rate: int, freq: float) -> float:
    """Least-squares fit of a sine at ``freq``: fitted power over residual variance, dB."""
    t = np.arange(len(samples)) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, samples, rcond=None)
    fit = basis @ coef
    return float(10 * np.log10(np.mean(fit**2) / np.var(samples - fit)))


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def test_default_corpus_has_the_promised_mix(corpus: tuple[Path, Manifest]) -> None:
    root, manifest = corpus
    plain = [f for f in manifest.files if not f.legacy and not f.corrupt]
    assert sum(f.media_type == "audio" for f in plain) == 12
    assert sum(f.media_type == "video" for f in plain) == 3
    assert sum(f.legacy for f in manifest.files) == 4
    assert sum(f.corrupt for f in manifest.files) == 2
    assert len(manifest.projects) == 2
    audio = [f for f in manifest.files if f.media_type == "audio" and not f.corrupt]
    assert {f.format for f in audio} == {"wav", "flac", "ogg"}
    assert {f.sample_rate for f in audio} == {8000, 16000, 22050, 44100, 48000}
    assert {f.channels for f in audio} == {1, 2}
    assert load_manifest(root) == manifest
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert on_disk == {f.uri for f in manifest.files} | {"manifest.json"}


def test_manifest_matches_the_bytes(corpus: tuple[Path, Manifest]) -> None:
    root, manifest = corpus
    for entry in manifest.files:
        data = (root / entry.uri).read_bytes()
        assert entry.sha256 == hashlib.sha256(data).hexdigest(), entry.uri
        assert entry.size_bytes == len(data), entry.uri


def test_audio_ground_truth(corpus: tuple[Path, Manifest]) -> None:
    root, manifest = corpus
    for entry in manifest.files:
        if entry.media_type != "audio" or entry.corrupt:
            continue
        assert entry.frequency and entry.snr and entry.sample_rate and entry.duration
        info = sf.info(str(root / entry.uri))
        assert info.frames / info.samplerate == entry.duration, entry.uri
        assert (info.samplerate, info.channels) == (entry.sample_rate, entry.channels)
        samples, rate = sf.read(str(root / entry.uri), always_2d=True)
        assert 110 <= entry.frequency <= 4000 and 5 <= entry.snr <= 35
        assert dominant_hz(samples[:, 0], rate) == pytest.approx(entry.frequency, abs=3)
        for channel in samples.T:
            assert measured_snr(channel, rate, entry.frequency) == pytest.approx(entry.snr, abs=1)


def test_video_ground_truth(corpus: tuple[Path, Manifest]) -> None:
    root, manifest = corpus
    videos = [f for f in manifest.files if f.media_type == "video" and not f.corrupt]
    assert videos
    for entry in videos:
        assert entry.duration and entry.frequency
        info = probe_media(root / entry.uri)
        assert (info.width, info.height, info.fps, info.has_audio) == (64, 48, 10.0, True)
        assert info.duration == pytest.approx(entry.duration, abs=0.1)
        samples = decode_audio(root / entry.uri, rate=16_000)
        assert dominant_hz(samples, 16_000) == pytest.approx(entry.frequency, abs=3)


def test_legacy_files_register_as_version_0_with_absolute_uris(
    corpus: tuple[Path, Manifest],
) -> None:
    root, manifest = corpus
    legacy = [f for f in manifest.files if f.legacy]
    for entry in legacy:
        record = entry.media_in(root)
        assert record.schema_version == 0 and record.media_type is None
        assert Path(record.uri).is_absolute() and Path(record.uri).read_bytes()
    by_suffix = {Path(f.uri).suffix: f for f in legacy}
    assert sf.info(str(root / by_suffix[".bin"].uri)).format == "WAV"
    assert by_suffix[".dat"].media_type == "video"
    assert probe_media(root / by_suffix[".dat"].uri).has_audio


def test_current_files_register_as_version_1(corpus: tuple[Path, Manifest]) -> None:
    root, manifest = corpus
    for entry in manifest.files:
        if not entry.legacy:
            record = entry.media_in(root)
            assert isinstance(record, MediaIn) and record.uri == entry.uri
            assert record.schema_version == 1 and record.size_bytes == entry.size_bytes


def test_projects_fit_their_media(corpus: tuple[Path, Manifest]) -> None:
    root, manifest = corpus
    ids = {f.uri: number for number, f in enumerate(manifest.files, start=1)}
    assert any(p.intro and p.outro and p.transition for p in manifest.projects)
    for project in manifest.projects:
        assert 2 <= len(project.clips) <= 3
        for clip in project.clips:
            duration = manifest.file(clip.uri).duration
            assert duration is not None and 0 <= clip.start < clip.end <= duration
        plan = RenderPlan(
            clips=[RenderClip(path=root / c.uri, start=c.start, end=c.end) for c in project.clips],
            intro=root / project.intro if project.intro else None,
            outro=root / project.outro if project.outro else None,
            transition=root / project.transition if project.transition else None,
            height=project.height,
            fps=project.fps,
            output_dir=root / "out",
            name_stem=project.name,
        )
        nominal = {root / f.uri: f.duration or 0.0 for f in manifest.files}
        assert expected_duration(plan, nominal) == pytest.approx(project.expected_duration)
        created = project.project_create(ids)
        assert [c.media_id for c in created.clips] == [ids[c.uri] for c in project.clips]


def test_corrupt_files_are_unreadable(tmp_path: Path) -> None:
    manifest = make_sample_corpus(tmp_path, audio=0, video=0, legacy=0, projects=0, corrupt=4)
    cases = [f for f in manifest.files if f.corrupt]
    assert [Path(f.uri).suffix for f in cases] == [".wav", ".mp4", ".flac", ".ogg"]
    for entry in cases:
        assert entry.expected_error and entry.duration is None and entry.sha256
        with pytest.raises(sf.LibsndfileError):
            sf.read(str(tmp_path / entry.uri))
        with pytest.raises(MediaError):
            probe_media(tmp_path / entry.uri)


def test_same_seed_same_bytes(corpus: tuple[Path, Manifest], tmp_path: Path) -> None:
    root, manifest = corpus
    before = (root / "manifest.json").read_bytes()
    assert make_sample_corpus(root) == manifest  # rerun in place
    assert (root / "manifest.json").read_bytes() == before
    again = make_sample_corpus(tmp_path)  # fresh directory
    assert again == manifest
    assert (tmp_path / "manifest.json").read_bytes() == before


def test_files_depend_only_on_seed_and_index(corpus: tuple[Path, Manifest], tmp_path: Path) -> None:
    _, manifest = corpus
    small = make_sample_corpus(tmp_path / "a", audio=3, video=0, legacy=1, projects=0, corrupt=1)
    assert all(f in manifest.files for f in small.files)
    other = make_sample_corpus(
        tmp_path / "b", audio=3, video=0, legacy=1, projects=0, corrupt=0, seed=1
    )
    assert {f.sha256 for f in other.files}.isdisjoint({f.sha256 for f in small.files})


def test_bad_counts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one video"):
        make_sample_corpus(tmp_path, video=0, projects=1)
    with pytest.raises(ValueError, match=">= 0"):
        make_sample_corpus(tmp_path, audio=-1)
