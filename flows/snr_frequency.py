"""snr-frequency: fill `media.snr` (dB) and `media.frequency` (dominant, Hz) from each
file's audio (a video's audio track; a file without audio is a per-record failure).

The analysis is CPU-bound numpy that holds the GIL for much of its time, so it runs on a
spawned process pool, one worker per core by default, each warmed once (`warm_up`: FFT
plans, windows, soundfile's library) before its first file. The spec and its compute live
in `flows.snr_spec`, which workers import without Prefect.

uv run backfill run snr-frequency --dry-run
uv run python -m flows.snr_frequency       # the same, with defaults
"""

from __future__ import annotations

from dataclasses import replace

from api.schemas import BackfillKind
from flows.engine import BackfillReport, backfill_flow, run_backfill
from flows.snr_spec import SNR_FREQUENCY, SnrParams


@backfill_flow(BackfillKind.SNR_FREQUENCY, SnrParams)
def snr_frequency(params: SnrParams) -> BackfillReport:
    """Measure the SNR and dominant frequency of every pending file and record them."""
    workers = params.workers
    spec = SNR_FREQUENCY if workers is None else replace(SNR_FREQUENCY, workers=workers)
    return run_backfill(spec, params)


if __name__ == "__main__":
    snr_frequency()
