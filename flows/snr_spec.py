"""The snr-frequency spec, without Prefect.

Its compute runs in spawned worker processes, which unpickle the spec and so import the
module that defines it: this one, not the flow module, so each worker starts without
Prefect's import cost (about 1.5 s per worker).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from api.schemas import BackfillKind, SnrFrequencyResult
from flows.compute.audio import COMPUTE_VERSION, analyse_audio, warm_up
from flows.spec import MAX_CONCURRENCY, Backfill, BackfillParams, Concurrency, Job, SameFields

Workers = Annotated[int | None, Field(ge=1, le=MAX_CONCURRENCY)]


class SnrParams(BackfillParams):
    """snr-frequency: the analysis runs on a pool of worker processes."""

    concurrency: Concurrency = Field(
        None, description="Chunks in flight at once; empty for one more than the workers."
    )
    workers: Workers = Field(None, description="Analysis processes; empty for one per CPU core.")


def compute_snr_frequency(job: Job[BackfillParams]) -> SnrFrequencyResult:
    """Analyse one file's audio (CPU bound: runs in a worker process)."""
    analysis = analyse_audio(job.file)
    return SnrFrequencyResult(
        record_id=job.item.record_id, snr=analysis.snr, frequency=analysis.frequency
    )


SNR_FREQUENCY = Backfill(
    kind=BackfillKind.SNR_FREQUENCY,
    result_model=SnrFrequencyResult,
    compute=compute_snr_frequency,
    compute_version=COMPUTE_VERSION,
    executor="process",
    warmup=warm_up,
    # The analysis is deterministic; a relative 1e-6 absorbs float noise across machines.
    compare=SameFields(("snr", "frequency"), tolerances=(("snr", 1e-6), ("frequency", 1e-6))),
)
