"""What is left to do: coverage per kind, and the kind registry behind it."""

from __future__ import annotations

from sqlmodel import Session

from api.schemas import BackfillKind, HashAlgorithm, PendingFilter
from api.services.kinds import KINDS
from api.services.work import coverage
from tests.services.utils import add_media, add_project, pending_ids


def test_every_kind_is_declared_once_in_order() -> None:
    assert list(KINDS) == list(BackfillKind)


def test_coverage_counts_each_kind(session: Session) -> None:
    add_media(session, 2)
    add_media(session, 1, prefix="timed", duration=1.0, sha256="a" * 64)
    add_media(session, 1, prefix="legacy", schema_version=0)
    add_project(session)  # its clip is one more current record
    kinds = {
        k.kind: (k.total, k.done, k.pending, k.failed, k.quarantined)
        for k in coverage(session=session, max_attempts=3, lease_seconds=60).kinds
    }
    assert kinds == {
        BackfillKind.MEDIA_DURATION: (4, 1, 3, 0, 0),
        BackfillKind.FILE_HASHING: (4, 1, 3, 0, 0),
        BackfillKind.SNR_FREQUENCY: (4, 0, 4, 0, 0),
        BackfillKind.VERSION_0: (5, 4, 1, 0, 0),
        BackfillKind.CLIP_COMPILE: (1, 0, 1, 0, 0),
    }


def test_pending_file_hashing_is_per_algorithm(session: Session) -> None:
    """A record is pending for each algorithm it has no digest of; the others are kept."""
    [md5] = add_media(session, 1, md5="a" * 32)
    [sha] = add_media(session, 1, prefix="sha", sha256="b" * 64)
    add_media(session, 1, prefix="both", sha256="b" * 64, md5="a" * 32)

    def pending(algorithm: HashAlgorithm | None) -> list[int]:
        where = PendingFilter(algorithm=algorithm)
        return pending_ids(session, BackfillKind.FILE_HASHING, where)

    assert pending(None) == [md5]
    assert pending(HashAlgorithm.MD5) == [sha]
