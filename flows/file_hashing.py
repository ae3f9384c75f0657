"""file-hashing: fill `media.hash` and `media.hash_algorithm` from the bytes of each file.

uv run backfill run file-hashing --dry-run
uv run python -m flows.file_hashing        # the same, with defaults
"""

from __future__ import annotations

from pydantic import Field

from api.schemas import BackfillKind, HashAlgorithm, HashResult
from flows.compute.hashing import hash_file
from flows.engine import BackfillReport, backfill_flow, run_backfill
from flows.spec import Backfill, BackfillParams, Job, SameFields


class HashingParams(BackfillParams):
    """file-hashing: a record hashed with another algorithm is pending again."""

    algorithm: HashAlgorithm = Field(
        HashAlgorithm.SHA256,
        description="Hash algorithm; records hashed with another one are hashed again.",
    )

    def pending_options(self) -> dict[str, str]:
        return {"algorithm": self.algorithm.value}


def compute_hash(job: Job[HashingParams]) -> HashResult:
    """Hash one file (hashlib releases the GIL: threads hash files on every core)."""
    algorithm = job.params.algorithm
    digest = hash_file(job.file, algorithm.value)
    return HashResult(record_id=job.item.record_id, hash=digest, algorithm=algorithm)


FILE_HASHING = Backfill(
    kind=BackfillKind.FILE_HASHING,
    result_model=HashResult,
    compute=compute_hash,
    executor="thread",
    compare=SameFields(("hash", "algorithm"), stored_as=(("algorithm", "hash_algorithm"),)),
)


@backfill_flow(BackfillKind.FILE_HASHING, HashingParams)
def file_hashing(params: HashingParams) -> BackfillReport:
    """Hash every pending file under the media root and record the digests through the API."""
    return run_backfill(FILE_HASHING, params)


if __name__ == "__main__":
    file_hashing()
