"""What a batch's applier decided for each item, before anything is written."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from api.schemas import BatchResult, FailureItem, Rejection


@dataclass
class Outcome:
    """Per-item decisions of one batch: rejected, unchanged, or a change to write."""

    rejected: list[Rejection] = field(default_factory=list)
    unchanged: list[int] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    #: Rejected for a value that will be wrong again next time: these go to the ledger.
    invalid: list[FailureItem] = field(default_factory=list)

    def reject(self, record_id: int | None, reason: str) -> None:
        """Refuse an item that may apply later (a conflict, a record not found)."""
        self.rejected.append(Rejection(record_id=record_id, reason=reason))

    def reject_invalid(self, record_id: int, reason: str) -> None:
        """Refuse a computed value for good: the record gets a failure-ledger attempt in the
        same transaction, so it is quarantined like a bad file instead of sent every run."""
        self.reject(record_id, reason)
        self.invalid.append(FailureItem(record_id=record_id, error=reason))

    def done_ids(self) -> list[int]:
        """Records that now hold the values sent: changed or already equal."""
        return [c["id"] for c in self.changes] + self.unchanged

    def result(self, *, dry_run: bool) -> BatchResult:
        return BatchResult(
            applied=len(self.changes),
            unchanged=len(self.unchanged),
            rejected=self.rejected,
            dry_run=dry_run,
        )


def dedupe(items: Sequence[Any], outcome: Outcome, *, key: str = "record_id") -> list[Any]:
    """Keep the first item per record; later duplicates are rejected by themselves."""
    seen: set[int] = set()
    kept = []
    for item in items:
        rid = getattr(item, key)
        if rid in seen:
            outcome.reject(rid, "duplicate record_id in this batch")
            continue
        seen.add(rid)
        kept.append(item)
    return kept
