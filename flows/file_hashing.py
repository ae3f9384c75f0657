"""file-hashing: fill each record's digest of one algorithm from the bytes of its file.

uv run backfill run file-hashing --dry-run
uv run python -m flows.file_hashing        # the same, with defaults
"""

from __future__ import annotations

from pydantic import Field

from api.schemas import BackfillKind, HashAlgorithm, HashResult, MediaPublic
from flows.compute.hashing import COMPUTE_VERSION, hash_file
from flows.engine import BackfillReport, backfill_flow, run_backfill
from flows.spec import Backfill, BackfillParams, Job, Mismatch, differences


class HashingParams(BackfillParams):
    """file-hashing: a record keeps one digest per algorithm; each algorithm has its own
    pending work and coverage."""

    algorithm: HashAlgorithm = Field(
        HashAlgorithm.SHA256,
        description="Hash algorithm; records without a digest of it are pending (digests of "
        "other algorithms are kept).",
    )

    def pending_options(self) -> dict[str, str]:
        return {"algorithm": self.algorithm.value}


def compute_hash(job: Job[HashingParams]) -> HashResult:
    """Hash one file (hashlib releases the GIL: threads hash files on every core)."""
    algorithm = job.params.algorithm
    digest = hash_file(job.file, algorithm.value)
    return HashResult(record_id=job.item.record_id, hash=digest, algorithm=algorithm)


def same_digest(result: HashResult, stored: MediaPublic) -> list[Mismatch]:
    """Verification: the record's stored digest of the result's algorithm is the one recomputed."""
    digest = stored.digests.get(result.algorithm)
    name = f"{result.algorithm.value} digest"
    return differences(stored.id, {name: digest and digest.digest}, {name: result.hash})


FILE_HASHING = Backfill(
    kind=BackfillKind.FILE_HASHING,
    result_model=HashResult,
    compute=compute_hash,
    compute_version=COMPUTE_VERSION,
    compare=same_digest,
)


@backfill_flow(BackfillKind.FILE_HASHING, HashingParams)
def file_hashing(params: HashingParams) -> BackfillReport:
    """Hash every pending file under the media root and record the digests through the API."""
    return run_backfill(FILE_HASHING, params)


if __name__ == "__main__":
    file_hashing()
