"""Signal-to-noise ratio and dominant frequency of a file's audio, in bounded memory.

Definitions (docs/analysis.md has the derivation and the measured accuracy):

* **frequency** - the frequency, in Hz, of the strongest spectral component, found on a
  Welch-averaged power spectrum (Kaiser beta=20 window, 50 % overlap, 2x zero padding)
  and refined between bins by fitting a parabola to the log power of the peak bin and its
  two neighbours.
* **snr** - ``10 * log10(signal power / noise power)`` in dB. Signal power is the power in
  a band of +-8 analysis bins around the peak (the window's whole main lobe; the leakage
  beyond it is below -150 dB) minus the noise that falls inside that band, estimated from
  the mean noise density of the rest of the spectrum. Noise power is everything else:
  total power minus signal power. The mean (DC offset) of each segment is removed first,
  so a DC offset is neither signal nor noise. Harmonics and other tones count as noise.

Channels are combined by averaging their power spectra, not by mixing the samples down to
mono: a mono mix would add 3 dB to the SNR of a stereo file whose channels carry
independent noise, and would cancel a tone that is out of phase between channels. For a
mono file the two are the same thing.

The audio is streamed: libsndfile formats are read with `soundfile.SoundFile.read` into
one reused block buffer; other containers (MP4, MKV, ...) are decoded by ffmpeg (the
imageio-ffmpeg binary) to a pipe of native-rate float32 PCM read block by block. Memory is
bounded by `block_seconds`, not by the length of the file.

librosa is not used on this path: its block reader (`librosa.stream`) is a thin wrapper
over `soundfile.blocks` that cannot read the ffmpeg pipe, and its spectral functions
(`librosa.stft`, `librosa.reassigned_spectrogram`) want the whole signal in memory and
return per-frame spectra we would then average ourselves. numpy does the same work on
blocks with one code path for both readers. scipy is not imported either: `np.kaiser` and
`np.fft` are as fast here, and importing `scipy.signal` alone costs about 1.2 s per process.
"""

from __future__ import annotations

import functools
import io
import math
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import numpy as np
import soundfile as sf
from numpy.typing import NDArray
from pydantic import BaseModel, Field

from api.schemas import SNR_RANGE_DB
from flows.compute.errors import MediaError
from flows.compute.probe import (
    SOUNDFILE_CONTAINERS,
    display_name,
    ffmpeg_exe,
    ffmpeg_input,
    probe,
    wav_sample_format,
)

#: The compute version of snr-frequency (stored beside each value it makes): bump it when
#: results change; `backfill run snr-frequency --mode stale` then redoes the older records.
COMPUTE_VERSION = 1

#: Seconds of audio read per block (a block costs 8 bytes per sample and channel: the read
#: buffer and the staging buffer that also holds the overlap carry).
DEFAULT_BLOCK_SECONDS = 2.0
#: Kaiser window shape: sidelobes below -150 dB, main lobe +-6.4 bins.
KAISER_BETA = 20.0
#: Half-width of the signal band, in analysis bins (covers the main lobe with margin).
SIGNAL_HALF_WIDTH_BINS = 8
#: FFT length / segment length (zero padding for the peak interpolation).
ZERO_PAD = 2
#: Target analysis bin width: the segment is the smallest power of two with bins <= this.
TARGET_BIN_HZ = 8.0
#: Shortest segment used for short files; shorter files are analysed as one segment.
MIN_SEGMENT = 64
#: Fewest samples a file must have to be analysed at all: below it the analysis segment is
#: 64 samples and the SNR is off by up to 6 dB (docs/analysis.md, "Where the estimates hold").
MIN_SAMPLES = 256
#: Fewest analysis bins between the peak and DC (or Nyquist): closer, the window's main
#: lobe meets its mirror image and the frequency is off by 0.1 % (4 bins) to 500 % (0.15).
MIN_PEAK_BINS = 4.5
#: Mean square power (full scale = 1) at or below which a file counts as silent.
SILENCE_POWER = 1e-20
#: Relative floor of signal and noise powers (float64 rounding, window leakage).
POWER_FLOOR = 1e-15
#: Containers decoded with libsndfile. Not mp3: libsndfile's mpg123 stops after 0.38 s of
#: a 2.4 s VBR mp3 without a Xing header, and reads a VBR file 18 dB noisier than FFmpeg.
SOUNDFILE_DECODES = SOUNDFILE_CONTAINERS
#: Segment samples transformed per FFT call: sizes the per-thread work buffers (~2 MB).
SAMPLES_PER_FFT_CALL = 1 << 16


class AudioAnalysis(BaseModel):
    """SNR and dominant frequency of a file's audio track."""

    snr: float = Field(
        ge=SNR_RANGE_DB[0], le=SNR_RANGE_DB[1], description="Signal-to-noise ratio, dB."
    )
    frequency: float = Field(gt=0, description="Dominant frequency, Hz.")
    sample_rate: int = Field(gt=0, description="Hz.")
    channels: int = Field(gt=0, description="Channels analysed.")
    duration: float = Field(ge=0, description="Seconds of audio analysed.")


# --- Spectrum --------------------------------------------------------------------------------


def kaiser(length: int) -> NDArray[np.float64]:
    """Periodic Kaiser window (beta = KAISER_BETA), as for spectral analysis."""
    window: NDArray[np.float64] = np.kaiser(length + 1, KAISER_BETA)[:-1]
    return window


@functools.lru_cache(maxsize=32)
def _window(length: int) -> NDArray[np.float64]:
    window = kaiser(length)
    window.setflags(write=False)
    return window


def segment_length(sample_rate: int, frames: int) -> int:
    """Analysis segment: power of two with bins <= TARGET_BIN_HZ, shortened so a short
    file still holds at least three half-overlapping segments."""
    length = 1 << max(0, math.ceil(math.log2(sample_rate / TARGET_BIN_HZ)))
    while length > MIN_SEGMENT and 2 * length > frames:
        length //= 2
    return max(length, MIN_SEGMENT)


_local = threading.local()
#: Workspaces (about 2 MB each) kept per thread.
WORKSPACES_PER_THREAD = 4


def _workspace(
    rows: int, channels: int, nfft: int
) -> tuple[NDArray[np.float64], NDArray[np.complex128]]:
    """FFT work buffers for one shape, reused by later files in the same thread.

    Allocating them per FFT call (or even per file) page-faults ~2 MB each time, which
    made a fresh worker process up to 60 % slower than a warm one. The padded buffer's
    columns past the segment are never written, so they stay zero. Buffers are per thread:
    two threads never share one.
    """
    cache: dict[tuple[int, int, int], tuple[NDArray[np.float64], NDArray[np.complex128]]]
    cache = _local.__dict__.setdefault("workspaces", {})
    key = (rows, channels, nfft)
    found = cache.pop(key, None)
    if found is None:
        found = (
            np.zeros((rows, channels, nfft)),
            np.empty((rows, channels, nfft // 2 + 1), dtype=np.complex128),
        )
        while len(cache) >= WORKSPACES_PER_THREAD:
            cache.pop(next(iter(cache)))
    cache[key] = found  # most recently used last
    return found


class SpectrumAccumulator:
    """Welch average of the power spectra of half-overlapping, windowed segments.

    Blocks of any length are fed in order; the overlap across block boundaries is kept
    in a carry of less than one segment. Memory does not grow with the input.
    """

    def __init__(self, segment: int, channels: int) -> None:
        self.segment = segment
        self.hop = segment // 2
        self.channels = channels
        self.nfft = ZERO_PAD * segment
        self.window = _window(segment)
        self.power = np.zeros(self.nfft // 2 + 1)
        self.count = 0
        self.frames = 0
        rows = max(1, SAMPLES_PER_FFT_CALL // (segment * channels))
        self._padded, self._spectrum = _workspace(rows, channels, self.nfft)
        self._staging = np.empty((0, channels), dtype=np.float32)  # carry + current block
        self._held = 0  # frames of carry at the front of the staging buffer
        self.effective_segment = segment  # the segment length spectrum() analysed

    def _add(self, frames: NDArray[np.floating], window: NDArray[np.float64]) -> None:
        """Add segments shaped (n, channels, len(window)) to the power sum."""
        rows, channels, length = frames.shape
        data = self._padded[:rows, :, :length]
        np.copyto(data, frames)  # to float64; the caller's buffer is left alone
        # einsum, not matmul: no BLAS threads competing with the other worker processes
        mean = np.einsum("...n,n->...", data, window)
        mean /= window.sum()
        data -= mean[..., np.newaxis]
        data *= window
        spectrum = self._spectrum[:rows]
        np.fft.rfft(self._padded[:rows], axis=-1, out=spectrum)
        squares = spectrum.view(np.float64)  # re, im, re, im, ...
        np.square(squares, out=squares)
        sums = squares.sum(axis=(0, 1))
        self.power += sums[0::2]
        self.power += sums[1::2]
        self.count += rows * channels

    def feed(self, block: NDArray[np.float32]) -> None:
        """Add a block shaped (frames, channels); the block may be reused afterwards."""
        if block.ndim != 2 or block.shape[1] != self.channels:
            raise ValueError(f"expected a (frames, {self.channels}) block, got {block.shape}")
        self.frames += block.shape[0]
        held, total = self._held, self._held + block.shape[0]
        if self._staging.shape[0] < total:
            grown = np.empty((total, self.channels), dtype=np.float32)
            grown[:held] = self._staging[:held]
            self._staging = grown
        self._staging[held:total] = block
        self._held = total
        if total < self.segment:
            return
        data = self._staging[:total]
        segments = (total - self.segment) // self.hop + 1
        view = np.lib.stride_tricks.sliding_window_view(data, self.segment, axis=0)[:: self.hop]
        rows = self._padded.shape[0]
        for start in range(0, segments, rows):
            self._add(view[start : start + rows], self.window)
        consumed = segments * self.hop
        self._held = total - consumed
        self._staging[: self._held] = data[consumed:]  # numpy copes with the overlap

    def spectrum(self) -> tuple[NDArray[np.float64], float]:
        """One-sided power spectrum (sums to the mean square per channel) and the signal band
        half-width in FFT bins. A file shorter than one segment is analysed as one segment
        of its own length."""
        half_width = float(SIGNAL_HALF_WIDTH_BINS * ZERO_PAD)
        window_power = float(self.window @ self.window)
        self.effective_segment = self.segment
        if self.count == 0:
            length = self._held
            if length < MIN_SAMPLES:
                raise ValueError("too short")
            window = kaiser(length)
            self._padded = np.zeros((1, self.channels, self.nfft))  # not the shared workspace
            self._add(self._staging[:length].T[np.newaxis], window)  # (1, channels, length)
            window_power = float(window @ window)
            half_width *= self.segment / length
            self.effective_segment = length
        power = self.power / (self.count * self.nfft * window_power)
        power[1:-1] *= 2.0
        return power, half_width


def estimate(
    power: NDArray[np.float64], half_width: float, sample_rate: int
) -> tuple[float, float]:
    """(snr_db, frequency_hz) from a one-sided power spectrum; see the module docstring.

    Raises ValueError if the spectrum holds no power (silence).
    """
    total = float(power.sum())
    if not total > SILENCE_POWER:
        raise ValueError("silent")
    nfft = 2 * (power.size - 1)
    last = power.size - 1
    peak = int(np.argmax(power[1:last])) + 1

    below, at, above = (float(v) for v in np.log(np.maximum(power[peak - 1 : peak + 2], 1e-300)))
    curvature = below - 2.0 * at + above
    offset = 0.5 * (below - above) / curvature if curvature < 0 else 0.0
    offset = min(0.5, max(-0.5, offset))
    frequency = (peak + offset) * sample_rate / nfft

    width = int(math.ceil(half_width))
    low, high = max(0, peak - width), min(last, peak + width)
    band = float(power[low : high + 1].sum())
    # Noise density: mean of the bins outside the band, DC region (affected by the mean
    # removal) and the Nyquist bin; fall back to all bins outside the band.
    mask = np.ones(power.size, dtype=bool)
    mask[low : high + 1] = False
    outside = mask.copy()
    mask[: width + 1] = False
    mask[last] = False
    if mask.any():
        density = float(power[mask].mean())
    elif outside.any():
        density = float(power[outside].mean())
    else:
        density = 0.0
    signal = band - density * (high - low + 1)
    noise = total - signal
    floor = total * POWER_FLOOR
    snr = 10.0 * math.log10(max(signal, floor) / max(noise, floor))
    snr = min(SNR_RANGE_DB[1], max(SNR_RANGE_DB[0], snr))
    return snr, frequency


def check_resolvable(
    name: str, frequency: float, sample_rate: int, segment: int, frames: int
) -> None:
    """MediaError unless the peak at `frequency` lies at least MIN_PEAK_BINS analysis bins
    from DC and from Nyquist, where the frequency and SNR estimates hold."""
    bins = frequency * segment / sample_rate
    if min(bins, segment / 2 - bins) >= MIN_PEAK_BINS:
        return
    longest = segment_length(sample_rate, 1 << 62)
    if segment / 2 - bins < MIN_PEAK_BINS:
        edge = sample_rate / 2 - MIN_PEAK_BINS * sample_rate / longest
        raise MediaError(
            f"{name} has its dominant frequency (about {frequency:.0f} Hz) too close to the "
            f"Nyquist frequency for a reliable estimate at {sample_rate} Hz (at most "
            f"{edge:.0f} Hz is resolved)"
        )
    needed = 1 << max(0, math.ceil(math.log2(MIN_PEAK_BINS * sample_rate / frequency)))
    if needed > longest:
        lowest = MIN_PEAK_BINS * sample_rate / longest
        raise MediaError(
            f"{name} has its dominant frequency (about {frequency:.1f} Hz) below the lowest "
            f"this analysis resolves at {sample_rate} Hz ({lowest:.1f} Hz)"
        )
    raise MediaError(
        f"{name} is too short to analyse: its dominant frequency (about {frequency:.0f} Hz) "
        f"needs at least {2 * needed} samples at {sample_rate} Hz, it has {frames}"
    )


# --- Readers -----------------------------------------------------------------------------


def _soundfile_blocks(path: Path, block_frames: int) -> Iterator[NDArray[np.float32]]:
    """Blocks (frames, channels) of float32 read with libsndfile into one reused buffer:
    each block is only valid until the next one is requested."""
    name = display_name(path)
    try:
        with sf.SoundFile(path) as handle:
            buffer = np.empty((block_frames, handle.channels), dtype=np.float32)
            while True:
                block = handle.read(out=buffer)
                if block.shape[0] == 0:
                    return
                yield block
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, OSError) as exc:
        raise MediaError(f"{name} could not be decoded ({_one_line(exc)})") from None


def _ffmpeg_blocks(
    path: Path, sample_rate: int, channels: int, block_frames: int
) -> Iterator[NDArray[np.float32]]:
    """Blocks (frames, channels) of the first audio stream decoded by ffmpeg to f32le PCM,
    in one reused buffer: each block is only valid until the next one is requested."""
    name = display_name(path)
    command = [
        ffmpeg_exe(),
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-i",
        ffmpeg_input(path),
        "-map",
        "0:a:0",
        "-vn",
        "-sn",
        "-dn",
        "-f",
        "f32le",
        "-acodec",
        "pcm_f32le",
        "-ar",
        str(sample_rate),
        "-ac",
        str(channels),
        "pipe:1",
    ]
    frame_bytes = 4 * channels
    buffer = bytearray(block_frames * frame_bytes)
    view = memoryview(buffer)
    with tempfile.TemporaryFile() as errors:
        try:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, bufsize=0
            )
        except OSError as exc:  # the environment, not the file: do not blame the record
            raise RuntimeError(f"could not start ffmpeg ({command[0]}): {exc}") from exc
        stream = cast(io.FileIO, process.stdout)  # bufsize=0: an unbuffered FileIO
        try:
            while True:
                filled = 0
                while filled < len(buffer):
                    count = stream.readinto(view[filled:])
                    if not count:
                        break
                    filled += count
                whole = filled - filled % frame_bytes
                if whole:
                    samples = np.frombuffer(buffer, dtype="<f4", count=whole // 4)
                    yield samples.reshape(-1, channels)
                if filled < len(buffer):
                    break
            returncode = process.wait()
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            stream.close()
        if returncode != 0:
            errors.seek(0)
            text = errors.read()[-4000:].decode("utf-8", errors="replace")
            reason = text.strip().splitlines()[-1].rsplit(": ", 1)[-1] if text.strip() else ""
            raise MediaError(
                f"{name} could not be decoded (ffmpeg exit {returncode}: {reason or 'no details'})"
            )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


def _soundfile_opens(path: Path) -> bool:
    try:
        with sf.SoundFile(path):
            return True
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, OSError):
        return False


# --- Public ----------------------------------------------------------------------------------


def analyse_audio(path: Path, *, block_seconds: float = DEFAULT_BLOCK_SECONDS) -> AudioAnalysis:
    """SNR (dB) and dominant frequency (Hz) of the audio in `path`, streamed block by block.

    Raises `MediaError` if the file is not readable media, has no audio track, is silent, or
    is too short for the estimates to hold (fewer than MIN_SAMPLES samples, or a dominant
    frequency closer than MIN_PEAK_BINS analysis bins to DC or Nyquist); ValueError if
    `block_seconds` is not positive.
    """
    if not block_seconds > 0:
        raise ValueError("block_seconds must be positive")
    name = display_name(path)
    info = probe(path)
    if not info.has_audio:
        raise MediaError(f"{name} has no audio track")
    if not info.sample_rate:
        raise MediaError(f"{name} has an audio track with an unknown sample rate")
    rate = info.sample_rate
    block_frames = max(1, int(block_seconds * rate))
    blocks: Iterator[NDArray[np.float32]]
    if info.container in SOUNDFILE_DECODES and _soundfile_opens(path):
        channels = info.channels or 1
        blocks = _soundfile_blocks(path, block_frames)
    elif info.container == "wav":  # neither libsndfile nor FFmpeg decodes it
        raise MediaError(
            f"{name} is a WAV file whose sample format ({wav_sample_format(path)}) neither "
            "libsndfile nor FFmpeg decodes"
        )
    else:
        channels = info.channels or 1  # unknown layout: ffmpeg mixes it down to mono
        blocks = _ffmpeg_blocks(path, rate, channels, block_frames)
    expected = int(round(info.duration * rate))
    accumulator = SpectrumAccumulator(segment_length(rate, expected), channels)
    for block in blocks:
        accumulator.feed(block)
    if accumulator.frames < MIN_SAMPLES:
        if accumulator.frames == 0:
            raise MediaError(f"{name} has no audio samples")
        raise MediaError(
            f"{name} is too short to analyse ({accumulator.frames} samples, "
            f"at least {MIN_SAMPLES} needed)"
        )
    power, half_width = accumulator.spectrum()
    try:
        snr, frequency = estimate(power, half_width, rate)
    except ValueError:
        raise MediaError(f"{name} is silent") from None
    check_resolvable(name, frequency, rate, accumulator.effective_segment, accumulator.frames)
    return AudioAnalysis(
        snr=snr,
        frequency=frequency,
        sample_rate=rate,
        channels=channels,
        duration=accumulator.frames / rate,
    )


def warm_up() -> None:
    """Pay the first-call costs once per process, so the first real file is as fast as the
    rest: analyses a half-second WAV at each usual rate (soundfile's cffi library, numpy's
    FFT plans, windows and work buffers) and locates ffmpeg. About 40 ms."""
    with tempfile.TemporaryDirectory(prefix="warm-up-") as directory:
        path = Path(directory) / "tone.wav"
        for rate in (8_000, 16_000, 22_050, 44_100, 48_000):
            seconds = np.arange(rate // 2) / rate
            sf.write(path, 0.5 * np.sin(2 * np.pi * 1000.0 * seconds), rate, subtype="PCM_16")
            analyse_audio(path)
    ffmpeg_exe()
