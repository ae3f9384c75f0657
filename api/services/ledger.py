"""The failure ledger: one row per (kind, record), one attempt per failure; a record is
quarantined after `MAX_ATTEMPTS` and leaves the ledger once a batch sets its values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import delete, select
from sqlmodel import Session

from api.core.db import upsert
from api.models import FAILURES, MEDIA, utcnow
from api.schemas import BackfillKind, BatchRequest, BatchResult, FailureItem
from api.services.outcome import Outcome, dedupe


class Refuse(Protocol):
    """Which failure items a kind refuses (record id -> reason); may change the records
    (a clip-compile failure fails its project), unless `dry_run`."""

    def __call__(
        self, *, session: Session, items: Sequence[FailureItem], dry_run: bool
    ) -> dict[int, str]: ...


def unknown_media(
    *,
    session: Session,
    items: Sequence[FailureItem],
    dry_run: bool,  # noqa: ARG001 - a lookup writes nothing
) -> dict[int, str]:
    """A media kind refuses a failure only for a record that does not exist."""
    ids = [i.record_id for i in items]
    known = set(session.scalars(select(MEDIA.c.id).where(MEDIA.c.id.in_(ids))))
    return {i: "record not found" for i in ids if i not in known}


def record_failures(
    *, session: Session, kind: BackfillKind, batch: BatchRequest[FailureItem], refuse: Refuse
) -> BatchResult:
    """Add one attempt per item to the ledger, but for the items `refuse` refuses."""
    outcome = Outcome()
    kept = dedupe(batch.items, outcome)
    add_attempts(session, kind, kept, dry_run=batch.dry_run, refuse=refuse, outcome=outcome)
    return outcome.result(dry_run=batch.dry_run)


def record_invalid(
    *, session: Session, kind: BackfillKind, outcome: Outcome, refuse: Refuse = unknown_media
) -> None:
    """Ledger attempts for the values a batch refused for good (see `Outcome.reject_invalid`)."""
    if outcome.invalid:
        add_attempts(session, kind, outcome.invalid, dry_run=False, refuse=refuse)


def add_attempts(
    session: Session,
    kind: BackfillKind,
    items: Sequence[FailureItem],
    *,
    dry_run: bool,
    refuse: Refuse,
    outcome: Outcome | None = None,
) -> None:
    """One more attempt per item (at most one item per record); refusals go to `outcome`."""
    outcome = outcome if outcome is not None else Outcome()
    refused = refuse(session=session, items=items, dry_run=dry_run)
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for item in items:
        if item.record_id in refused:
            outcome.reject(item.record_id, refused[item.record_id])
            continue
        row = {"record_id": item.record_id, "last_error": item.error, "updated_at": now}
        rows.append(row)
        outcome.changes.append(row)
    if dry_run or not rows:
        return
    # One upsert: a first failure and a repeated one are the same statement, so two requests
    # that both see "no row yet" cannot both insert (the unique (kind, record_id) decides, and
    # the loser adds its attempt to the winner's row). Record order: no deadlock between two
    # batches of the same records in other orders.
    stmt = upsert(session, FAILURES)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=[FAILURES.c.kind, FAILURES.c.record_id],
            set_={
                "attempts": FAILURES.c.attempts + 1,
                "last_error": stmt.excluded.last_error,
                "updated_at": stmt.excluded.updated_at,
            },
        ),
        [{"kind": kind.value, **r} for r in sorted(rows, key=lambda r: r["record_id"])],
    )


def settle_failures(session: Session, kind: BackfillKind, done: list[int]) -> None:
    """Done records leave the failure ledger (found by an index range scan, usually empty)."""
    if not done:
        return
    in_range = session.execute(
        select(FAILURES.c.record_id).where(
            FAILURES.c.kind == kind, FAILURES.c.record_id.between(min(done), max(done))
        )
    ).scalars()
    clear_failures(session, kind, sorted(set(in_range).intersection(done)))


def clear_failures(session: Session, kind: BackfillKind, ids: list[int]) -> None:
    """Remove these records of `kind` from the ledger."""
    if ids:
        session.execute(
            delete(FAILURES).where(FAILURES.c.kind == kind, FAILURES.c.record_id.in_(ids))
        )
