"""The record of every run: one row per flow run, its end, and what happened on the way."""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlmodel import Session

from api.core.db import upsert
from api.models import RUNS, Run, RunEvent, utcnow
from api.schemas import (
    BackfillKind,
    RunEnd,
    RunEventIn,
    RunEventPublic,
    RunPage,
    RunPublic,
    RunStart,
)
from api.services.errors import NotFound


def start_run(*, session: Session, run_in: RunStart, token_name: str) -> RunPublic:
    """Record that a flow run started: once per `flow_run_id` (a repeat changes nothing). A
    higher `attempt` (a Retry of the flow run) runs it again: state `running`, a `retry` event."""
    row = run_in.model_dump(exclude={"parameters"})
    row |= {
        "kind": run_in.kind.value,
        "mode": run_in.mode.value if run_in.mode else None,
        "parameters": json.dumps(run_in.parameters, sort_keys=True),
        "token_name": token_name,
        "state": "running",
        "started_at": utcnow(),
    }
    session.execute(upsert(session, RUNS).values(row).on_conflict_do_nothing())
    run = _run(session, run_in.flow_run_id, lock=True)
    if run_in.attempt > run.attempt:
        run.attempt, run.state, run.reason, run.ended_at = run_in.attempt, "running", None, None
        session.add(RunEvent(run_id=_id(run), event="retry", reason=f"attempt {run_in.attempt}"))
    session.commit()
    return _public(session, run)


def end_run(*, session: Session, flow_run_id: str, end: RunEnd) -> RunPublic:
    """Record how a run ended; counts left out keep their values (a cancel after the end)."""
    run = _run(session, flow_run_id, lock=True)
    for name, value in end.model_dump(exclude_none=True).items():
        setattr(run, name, value)
    run.ended_at = utcnow()
    session.add(run)
    session.commit()
    return _public(session, run)


def add_event(*, session: Session, flow_run_id: str, event: RunEventIn) -> RunPublic:
    """Record something that happened to a run (pause, resume, cancel...) with its reason."""
    run = _run(session, flow_run_id)
    session.add(RunEvent(run_id=_id(run), event=event.event, reason=event.reason))
    session.commit()
    return _public(session, run)


def get_run(*, session: Session, flow_run_id: str) -> RunPublic:
    return _public(session, _run(session, flow_run_id))


def list_runs(
    *, session: Session, before_id: int | None, limit: int, kind: BackfillKind | None = None
) -> RunPage:
    """Runs newest first, with their events."""
    stmt = select(Run).order_by(RUNS.c.id.desc())
    if before_id is not None:
        stmt = stmt.where(RUNS.c.id < before_id)
    if kind is not None:
        stmt = stmt.where(RUNS.c.kind == kind.value)
    runs = list(session.scalars(stmt.limit(limit + 1)))
    events = _events(session, [r.id for r in runs[:limit] if r.id is not None])
    return RunPage(
        items=[_public(session, r, events.get(r.id or 0, [])) for r in runs[:limit]],
        next_before_id=runs[limit - 1].id if len(runs) > limit else None,
    )


def _run(session: Session, flow_run_id: str, *, lock: bool = False) -> Run:
    stmt = select(Run).where(Run.flow_run_id == flow_run_id)  # type: ignore[arg-type]
    if lock:  # PostgreSQL: two writers of one run take turns (SQLite has one writer anyway)
        stmt = stmt.with_for_update()
    run = session.scalars(stmt).first()
    if run is None:
        raise NotFound(f"Run not found: {flow_run_id[:200]!r}")
    return run


def _id(run: Run) -> int:
    assert run.id is not None, "a stored run has an id"
    return run.id


def _events(session: Session, run_ids: list[int]) -> dict[int, list[RunEventPublic]]:
    found: dict[int, list[RunEventPublic]] = {}
    if not run_ids:
        return found
    stmt = (
        select(RunEvent)
        .where(RunEvent.run_id.in_(run_ids))  # type: ignore[attr-defined]
        .order_by(RunEvent.id)  # type: ignore[arg-type]
    )
    for event in session.scalars(stmt):
        found.setdefault(event.run_id, []).append(RunEventPublic.model_validate(event))
    return found


def _public(session: Session, run: Run, events: list[RunEventPublic] | None = None) -> RunPublic:
    if events is None:
        events = _events(session, [run.id] if run.id is not None else []).get(run.id or 0, [])
    fields = {name: getattr(run, name) for name in RunPublic.model_fields if name != "events"}
    fields["parameters"] = json.loads(run.parameters)
    return RunPublic.model_validate(fields | {"events": events})
