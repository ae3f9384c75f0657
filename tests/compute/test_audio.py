"""analyse_audio: SNR within 1 dB and frequency within 1 Hz of the constructed tone.

Every file is a unit sine (random phase per channel) plus white Gaussian noise whose
variance gives the constructed SNR = 10 log10((A^2/2) / sigma^2), scaled to a 0.9 peak
and written as 16-bit WAV/FLAC (scaling changes neither SNR nor frequency).
"""

from __future__ import annotations

import itertools
import math
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import soundfile as sf

from flows.compute import audio as audio_module
from flows.compute.audio import AudioAnalysis, analyse_audio, warm_up
from flows.compute.errors import MediaError
from tests.compute.conftest import PEAK, Mux, Tone, Video, WriteTone, tone_samples

T = TypeVar("T")

RATES = [8_000, 16_000, 22_050, 44_100, 48_000]
SNRS = [0.0, 10.0, 20.0, 30.0, 40.0]
SNR_TOLERANCE_DB = 1.0
FREQUENCY_TOLERANCE_HZ = 1.0


def top_frequency(rate: int) -> float:
    """The highest test tone: 8 kHz where the rate allows, else 45 % of the rate."""
    return min(7_999.3, 0.45 * rate)


def check(result: AudioAnalysis, tone: Tone) -> None:
    assert tone.snr_db is not None
    assert abs(result.snr - tone.snr_db) <= SNR_TOLERANCE_DB, (result, tone)
    assert abs(result.frequency - tone.frequency) <= FREQUENCY_TOLERANCE_HZ, (result, tone)
    assert result.sample_rate == tone.sample_rate
    assert result.channels == tone.channels
    assert result.duration == tone.duration


# --- Accuracy grid ------------------------------------------------------------------------

GRID = [
    (rate, snr, frequency)
    for rate in RATES
    for snr in SNRS
    for frequency in (50.0, 1_234.56, top_frequency(rate))
]


@pytest.mark.parametrize(("rate", "snr", "frequency"), GRID)
def test_grid_mono_one_second(
    write_tone: WriteTone, rate: int, snr: float, frequency: float
) -> None:
    seed = GRID.index((rate, snr, frequency))
    tone = write_tone(sample_rate=rate, frequency=frequency, snr_db=snr, seconds=1.0, seed=seed)
    check(analyse_audio(tone.path), tone)


# Stereo, FLAC, in-between SNRs and frequencies, 5 s.
STEREO = list(
    zip(
        RATES,
        [0.0, 13.7, 26.2, 33.3, 40.0],
        [8_000.0, 3_141.59, 97.7, 555.5, 60.2],
        strict=True,
    )
)


@pytest.mark.parametrize(("rate", "snr", "frequency"), STEREO)
def test_stereo_flac_five_seconds(
    write_tone: WriteTone, rate: int, snr: float, frequency: float
) -> None:
    frequency = min(frequency, top_frequency(rate))
    tone = write_tone(
        "stereo.flac",
        sample_rate=rate,
        frequency=frequency,
        snr_db=snr,
        seconds=5.0,
        channels=2,
        seed=rate,
    )
    check(analyse_audio(tone.path), tone)


@pytest.mark.parametrize(
    ("rate", "snr", "frequency", "channels"),
    [(48_000, 0.0, 50.0, 2), (8_000, 40.0, 3_333.3, 1), (44_100, 21.0, 7_999.9, 1)],
)
def test_thirty_seconds(
    write_tone: WriteTone, rate: int, snr: float, frequency: float, channels: int
) -> None:
    tone = write_tone(
        sample_rate=rate,
        frequency=frequency,
        snr_db=snr,
        seconds=30.0,
        channels=channels,
        seed=30,
    )
    check(analyse_audio(tone.path), tone)


def test_sweep_of_frequencies_between_bins(write_tone: WriteTone) -> None:
    """Sub-bin accuracy: 25 tones spread over 50 Hz..8 kHz at 44.1 kHz, 10 dB SNR."""
    for index, frequency in enumerate(np.geomspace(50.0, 8_000.0, 25)):
        tone = write_tone(
            sample_rate=44_100, frequency=float(frequency), snr_db=10.0, seconds=1.0, seed=index
        )
        check(analyse_audio(tone.path), tone)


# --- Definitions ---------------------------------------------------------------------------


def test_clean_16_bit_tone_is_limited_by_quantisation(write_tone: WriteTone) -> None:
    tone = write_tone(sample_rate=48_000, frequency=997.0, snr_db=None, subtype="PCM_16")
    quantisation = (2.0**-15) ** 2 / 12  # LSB^2 / 12
    expected = 10 * math.log10((PEAK**2 / 2) / quantisation)
    assert abs(analyse_audio(tone.path).snr - expected) <= SNR_TOLERANCE_DB


def test_clean_float_tone_is_far_above_40_db(write_tone: WriteTone) -> None:
    tone = write_tone(sample_rate=16_000, frequency=1_000.0, snr_db=None, subtype="FLOAT")
    result = analyse_audio(tone.path)
    assert result.snr > 120.0
    assert abs(result.frequency - 1_000.0) <= 0.01


def test_dc_offset_is_neither_signal_nor_noise(tmp_path: Path) -> None:
    rate, frequency, snr = 16_000, 700.0, 25.0
    signal = tone_samples(sample_rate=rate, frequency=frequency, frames=rate, snr_db=snr)
    sf.write(tmp_path / "plain.wav", signal * 0.5, rate, subtype="FLOAT")
    sf.write(tmp_path / "offset.wav", signal * 0.5 + 0.4, rate, subtype="FLOAT")
    plain, offset = analyse_audio(tmp_path / "plain.wav"), analyse_audio(tmp_path / "offset.wav")
    assert abs(offset.snr - snr) <= SNR_TOLERANCE_DB
    assert abs(offset.snr - plain.snr) <= 0.01
    assert abs(offset.frequency - frequency) <= FREQUENCY_TOLERANCE_HZ


def test_anti_phase_stereo_is_not_cancelled(tmp_path: Path) -> None:
    """Power spectra are averaged across channels: a mono mix would be silence here."""
    rate, frequency, snr = 22_050, 440.0, 30.0
    left = tone_samples(sample_rate=rate, frequency=frequency, frames=2 * rate, snr_db=snr)
    sf.write(tmp_path / "anti.wav", np.hstack([left, -left]), rate, subtype="PCM_16")
    result = analyse_audio(tmp_path / "anti.wav")
    assert abs(result.snr - snr) <= SNR_TOLERANCE_DB
    assert abs(result.frequency - frequency) <= FREQUENCY_TOLERANCE_HZ


def test_two_tones_dominant_wins_and_the_other_is_noise(tmp_path: Path) -> None:
    rate, seconds = 16_000, 2.0
    t = np.arange(int(rate * seconds)) / rate
    strong, weak = 1.0, 0.1  # weak tone 20 dB down: SNR = 20 dB with no other noise
    signal = strong * np.sin(2 * np.pi * 1_500.0 * t) + weak * np.sin(2 * np.pi * 300.0 * t)
    sf.write(tmp_path / "two.wav", signal / 1.2, rate, subtype="FLOAT")
    result = analyse_audio(tmp_path / "two.wav")
    assert abs(result.frequency - 1_500.0) <= FREQUENCY_TOLERANCE_HZ
    assert abs(result.snr - 20 * math.log10(strong / weak)) <= 0.1


@pytest.mark.parametrize("block_seconds", [0.013, 0.37, 1.0, 60.0])
def test_result_does_not_depend_on_block_size(write_tone: WriteTone, block_seconds: float) -> None:
    tone = write_tone(sample_rate=22_050, frequency=2_222.2, snr_db=17.0, seconds=3.0)
    reference = analyse_audio(tone.path)
    result = analyse_audio(tone.path, block_seconds=block_seconds)
    assert result.snr == pytest.approx(reference.snr, abs=1e-9)
    assert result.frequency == pytest.approx(reference.frequency, abs=1e-9)
    assert result.duration == reference.duration


def test_short_file_shorter_than_a_segment(write_tone: WriteTone) -> None:
    tone = write_tone(sample_rate=48_000, frequency=3_000.0, snr_db=30.0, seconds=0.05)
    result = analyse_audio(tone.path)
    assert abs(result.frequency - 3_000.0) <= 0.01 * 3_000.0
    assert result.duration == tone.duration


def test_ogg_is_analysed(write_tone: WriteTone) -> None:
    tone = write_tone("t.ogg", sample_rate=44_100, frequency=660.0, snr_db=None, seconds=2.0)
    result = analyse_audio(tone.path)
    assert abs(result.frequency - 660.0) <= FREQUENCY_TOLERANCE_HZ
    assert result.snr > 30.0  # Vorbis coding noise only


# --- ffmpeg path (video containers) --------------------------------------------------------


def test_ffmpeg_blocks_equal_soundfile_samples(write_tone: WriteTone) -> None:
    tone = write_tone(sample_rate=22_050, seconds=1.3, channels=2)
    want = sf.read(tone.path, dtype="float32", always_2d=True)[0]
    # each block is valid until the next one is read (one reused buffer): copy them
    blocks = [b.copy() for b in audio_module._ffmpeg_blocks(tone.path, 22_050, 2, 1000)]
    assert all(block.shape == (1000, 2) for block in blocks[:-1])
    np.testing.assert_array_equal(np.concatenate(blocks), want)


def test_video_with_pcm_audio_is_accurate(write_tone: WriteTone, mux_pcm_video: Mux) -> None:
    tone = write_tone(sample_rate=48_000, frequency=1_000.3, snr_db=12.0, seconds=4.0, channels=2)
    video = mux_pcm_video(tone.path, "tone.mkv")
    result = analyse_audio(video)
    check(result, tone)
    direct = analyse_audio(tone.path)
    assert result.snr == pytest.approx(direct.snr, abs=1e-6)
    assert result.frequency == pytest.approx(direct.frequency, abs=1e-6)


def test_mp4_aac_tone(mp4_with_audio: Video) -> None:
    result = analyse_audio(mp4_with_audio.path)
    assert mp4_with_audio.tone_hz is not None
    assert abs(result.frequency - mp4_with_audio.tone_hz) <= FREQUENCY_TOLERANCE_HZ
    assert result.snr > 20.0  # a clean tone; AAC coding noise only
    assert (result.sample_rate, result.channels) == (mp4_with_audio.audio_rate, 2)
    assert abs(result.duration - mp4_with_audio.seconds) <= 0.1


# --- Errors ---------------------------------------------------------------------------------


def test_video_without_audio(mp4_without_audio: Video) -> None:
    with pytest.raises(MediaError, match=r"^mute\.mp4 has no audio track$"):
        analyse_audio(mp4_without_audio.path)


@pytest.mark.parametrize("value", [0.0, 0.25])
def test_silence_and_constant_offset_are_silent(tmp_path: Path, value: float) -> None:
    sf.write(tmp_path / "quiet.wav", np.full((16_000, 2), value), 16_000)
    with pytest.raises(MediaError, match=r"^quiet\.wav is silent$"):
        analyse_audio(tmp_path / "quiet.wav")


def test_too_short_and_empty_audio(tmp_path: Path) -> None:
    sf.write(tmp_path / "tiny.wav", np.full(10, 0.5), 8_000)
    with pytest.raises(MediaError, match=r"^tiny\.wav is too short to analyse \(10 samples"):
        analyse_audio(tmp_path / "tiny.wav")
    sf.write(tmp_path / "none.wav", np.zeros((0, 1)), 8_000)
    with pytest.raises(MediaError, match=r"^none\.wav has no audio samples$"):
        analyse_audio(tmp_path / "none.wav")


def test_bad_files(tmp_path: Path, write_tone: WriteTone) -> None:
    wav = write_tone(seconds=0.5).path.read_bytes()
    garbage = np.random.default_rng(5).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    cases = {
        "empty.wav": b"",
        "header-cut.wav": wav[:30],
        "data-cut.wav": wav[: len(wav) // 2],
        "garbage.wav": garbage,
        "riff-garbage.wav": b"RIFF" + (len(garbage) + 4).to_bytes(4, "little") + b"WAVE" + garbage,
        "notes.txt": b"not audio\n" * 20,
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(MediaError) as caught:
            analyse_audio(tmp_path / name)
        assert str(caught.value).startswith(name)
        assert "\n" not in str(caught.value)
    with pytest.raises(MediaError, match=r"^missing\.flac does not exist$"):
        analyse_audio(tmp_path / "missing.flac")


def test_corrupt_flac_body_is_a_media_error(tmp_path: Path, write_tone: WriteTone) -> None:
    """Valid header and last frame, garbage in the middle: decoding fails cleanly."""
    data = bytearray(write_tone("t.flac", seconds=3.0, sample_rate=8_000).path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 3000] = bytes(3000)
    (tmp_path / "holes.flac").write_bytes(bytes(data))
    try:
        result = analyse_audio(tmp_path / "holes.flac")
    except MediaError as error:
        assert str(error).startswith("holes.flac ")
    else:  # libsndfile may skip the damaged frames; then the tone is still found
        assert abs(result.frequency - 440.0) <= FREQUENCY_TOLERANCE_HZ


def test_block_seconds_must_be_positive(write_tone: WriteTone) -> None:
    tone = write_tone()
    with pytest.raises(ValueError, match="block_seconds"):
        analyse_audio(tone.path, block_seconds=0)


# --- Bounded memory -----------------------------------------------------------------------


def _peak_traced(function: Callable[[Path], T], path: Path) -> tuple[T, int]:
    """function(path) and the peak of traced memory allocated during the call."""
    tracemalloc.start()
    try:
        result = function(path)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_long_file_is_streamed(write_tone: WriteTone, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten minutes at 8 kHz: 19 MB once decoded to float32; analysed in a few MB."""
    tone = write_tone(
        "long.wav", sample_rate=8_000, frequency=1_001.0, snr_db=15.0, seconds=600.0, seed=9
    )
    decoded_bytes = tone.frames * tone.channels * 4
    reads: list[int] = []
    original = sf.SoundFile.read

    def counting_read(self: sf.SoundFile, *args: object, **kwargs: object) -> object:
        result = original(self, *args, **kwargs)
        reads.append(len(result))
        return result

    monkeypatch.setattr(sf.SoundFile, "read", counting_read)
    result, peak = _peak_traced(analyse_audio, tone.path)
    check(result, tone)
    assert peak < decoded_bytes / 5, f"peak {peak} B for {decoded_bytes} B of samples"
    block = int(audio_module.DEFAULT_BLOCK_SECONDS * tone.sample_rate)
    assert len(reads) >= tone.frames // block  # read block by block
    assert max(reads) <= block


def test_long_video_audio_is_streamed(write_tone: WriteTone, mux_pcm_video: Mux) -> None:
    tone = write_tone(
        "long.wav", sample_rate=16_000, frequency=321.0, snr_db=5.0, seconds=180.0, seed=4
    )
    video = mux_pcm_video(tone.path, "long.mkv")
    decoded_bytes = tone.frames * tone.channels * 4
    result, peak = _peak_traced(analyse_audio, video)
    check(result, tone)
    assert peak < decoded_bytes / 3, f"peak {peak} B for {decoded_bytes} B of samples"


def test_warm_up_is_idempotent(write_tone: WriteTone) -> None:
    warm_up()
    warm_up()
    tone = write_tone(sample_rate=8_000, frequency=880.0, snr_db=20.0)
    check(analyse_audio(tone.path), tone)


def test_every_rate_channel_combination_runs(write_tone: WriteTone) -> None:
    for index, (rate, channels) in enumerate(itertools.product(RATES, (1, 2, 3))):
        tone = write_tone(
            sample_rate=rate, frequency=1_000.0, snr_db=35.0, channels=channels, seed=index
        )
        check(analyse_audio(tone.path), tone)


def test_random_cases_cover_the_ranges(write_tone: WriteTone) -> None:
    """80 random draws: rate from the five, SNR uniform 0..40 dB, tone log-uniform over
    50 Hz..8 kHz (below 45 % of the rate), mono or stereo, 1..30 s (every 8th long)."""
    rng = np.random.default_rng(2024)
    for index in range(80):
        rate = int(rng.choice(RATES))
        seconds = float(rng.uniform(1.0, 30.0)) if index % 8 == 0 else float(rng.uniform(1, 2))
        tone = write_tone(
            "random.wav",
            sample_rate=rate,
            frequency=float(np.exp(rng.uniform(np.log(50.0), np.log(top_frequency(rate))))),
            snr_db=float(rng.uniform(0.0, 40.0)),
            seconds=seconds,
            channels=int(rng.choice([1, 2])),
            seed=index,
        )
        check(analyse_audio(tone.path), tone)


def test_threads_do_not_share_work_buffers(write_tone: WriteTone) -> None:
    """Prefect may run tasks in threads: concurrent analyses equal sequential ones."""
    from concurrent.futures import ThreadPoolExecutor

    tones = [
        write_tone(
            f"thread-{index}.wav",
            sample_rate=rate,
            frequency=300.0 + 97.0 * index,
            snr_db=5.0 * index,
            seconds=2.0,
            channels=1 + index % 2,
            seed=index,
        )
        for index, rate in enumerate([8_000, 16_000, 16_000, 44_100, 44_100, 48_000, 48_000, 8_000])
    ]
    sequential = [analyse_audio(tone.path) for tone in tones]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            assert list(pool.map(lambda tone: analyse_audio(tone.path), tones)) == sequential
