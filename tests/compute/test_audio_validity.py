"""Where the SNR and frequency estimates hold, and that they fail with a reason outside it
(docs/analysis.md, "Where the estimates hold")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from flows.compute.audio import MIN_PEAK_BINS, analyse_audio, segment_length
from flows.compute.errors import MediaError
from tests.compute.media_corpus import wav_odd_depth


def sine(path: Path, *, frequency: float, frames: int, rate: int, snr_db: float | None = None,
         seed: int = 0) -> Path:  # fmt: skip
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / rate
    x = np.sin(2 * np.pi * frequency * t + rng.uniform(0, 2 * np.pi))
    if snr_db is not None:
        x += rng.normal(0.0, np.sqrt(0.5 / 10 ** (snr_db / 10)), frames)
    sf.write(path, 0.5 * x / np.max(np.abs(x)), rate, subtype="FLOAT")
    return path


@pytest.mark.parametrize("frames", [441, 1000])
def test_short_440_hz_sine_fails_instead_of_a_wrong_frequency(tmp_path: Path, frames: int) -> None:
    path = sine(tmp_path / "short.wav", frequency=440.0, frames=frames, rate=44_100)
    with pytest.raises(MediaError, match=r"^short\.wav is too short to analyse: .* needs at least"):
        analyse_audio(path)


def test_2000_sample_440_hz_sine_is_right(tmp_path: Path) -> None:
    path = sine(tmp_path / "ok.wav", frequency=440.0, frames=2000, rate=44_100, snr_db=40.0)
    result = analyse_audio(path)
    assert abs(result.frequency - 440.0) < 0.05
    assert abs(result.snr - 40.0) < 1.0


def test_fewer_than_256_samples_fail(tmp_path: Path) -> None:
    path = sine(tmp_path / "tiny.wav", frequency=5000.0, frames=255, rate=44_100)
    with pytest.raises(MediaError, match=r"^tiny\.wav is too short to analyse \(255 samples"):
        analyse_audio(path)


def test_frequency_below_the_resolvable_floor_fails(tmp_path: Path) -> None:
    lowest = MIN_PEAK_BINS * 44_100 / segment_length(44_100, 10**9)  # 24.2 Hz
    path = sine(tmp_path / "hum.wav", frequency=0.6 * lowest, frames=44_100 * 3, rate=44_100)
    with pytest.raises(MediaError, match=r"^hum\.wav has its dominant frequency .* below"):
        analyse_audio(path)
    ok = sine(tmp_path / "ok.wav", frequency=1.3 * lowest, frames=44_100 * 3, rate=44_100)
    assert abs(analyse_audio(ok).frequency - 1.3 * lowest) < 0.01


def test_frequency_next_to_nyquist_fails(tmp_path: Path) -> None:
    path = sine(tmp_path / "edge.wav", frequency=3995.0, frames=16_000, rate=8000)
    with pytest.raises(MediaError, match=r"^edge\.wav .* too close to the Nyquist"):
        analyse_audio(path)
    ok = sine(tmp_path / "ok.wav", frequency=3940.0, frames=16_000, rate=8000)
    assert abs(analyse_audio(ok).frequency - 3940.0) < 0.01


@pytest.mark.parametrize("bins", [4.6, 5.0, 8.0, 40.0])
@pytest.mark.parametrize("frames", [256, 441, 2000, 20_000])
def test_accuracy_inside_the_valid_region(tmp_path: Path, bins: float, frames: int) -> None:
    """Just inside the limit: frequency within 0.05 %, SNR (40 dB) within 1.6 dB."""
    rate = 44_100
    frequency = bins * rate / segment_length(rate, frames)
    for seed in range(3):
        path = sine(tmp_path / f"t{seed}.wav", frequency=frequency, frames=frames, rate=rate,
                    snr_db=40.0, seed=seed)  # fmt: skip
        result = analyse_audio(path)
        assert abs(result.frequency - frequency) / frequency < 5e-4
        assert abs(result.snr - 40.0) < 1.6


@pytest.mark.parametrize("bits", [36, 45, 53])
def test_odd_bit_depth_wav_names_its_format(tmp_path: Path, bits: int) -> None:
    path = wav_odd_depth(tmp_path / "odd.wav", bits, frames=4000)
    width = (bits + 7) // 8
    with pytest.raises(MediaError, match=rf"^odd\.wav is a WAV file whose sample format "
                       rf"\({bits}-bit PCM in {width}-byte samples\) neither"):  # fmt: skip
        analyse_audio(path)
