"""The record of every run: start, end and events (flows write them), and the list."""

from typing import Annotated

from fastapi import APIRouter, Path, Query

from api.deps import Admin, Caller, ReadSessionDep, SessionDep, errors, known_query
from api.routes.paging import Limit
from api.schemas import BackfillKind, FlowRunId, RunEnd, RunEventIn, RunPage, RunPublic, RunStart
from api.services import runs as svc

router = APIRouter(prefix="/runs", tags=["runs"], responses=errors(401, 422, 503))

FlowRunPath = Annotated[FlowRunId, Path()]
WRITE_ERRORS = errors(400, 403, 413, 415)


@router.get("", dependencies=[known_query("before_id", "limit", "kind")])
def read_runs(
    session: ReadSessionDep,
    _caller: Caller,
    before_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    limit: Limit = 50,
    kind: BackfillKind | None = None,
) -> RunPage:
    """Every run, newest first; pass `next_before_id` back as `before_id`."""
    return svc.list_runs(session=session, before_id=before_id, limit=limit, kind=kind)


@router.post("", responses=WRITE_ERRORS)
def start_run(session: SessionDep, caller: Admin, body: RunStart) -> RunPublic:
    """A flow run starts (idempotent on `flow_run_id`; a higher `attempt` restarts it)."""
    return svc.start_run(session=session, run_in=body, token_name=caller.name)


@router.get("/{flow_run_id}", responses=errors(404))
def read_run(session: ReadSessionDep, _caller: Caller, flow_run_id: FlowRunPath) -> RunPublic:
    """One run with its events."""
    return svc.get_run(session=session, flow_run_id=flow_run_id)


@router.post("/{flow_run_id}/end", responses=WRITE_ERRORS | errors(404))
def end_run(
    session: SessionDep, _caller: Admin, flow_run_id: FlowRunPath, body: RunEnd
) -> RunPublic:
    """A run ends: its state, reason and counts."""
    return svc.end_run(session=session, flow_run_id=flow_run_id, end=body)


@router.post("/{flow_run_id}/events", responses=WRITE_ERRORS | errors(404))
def create_run_event(
    session: SessionDep, _caller: Admin, flow_run_id: FlowRunPath, body: RunEventIn
) -> RunPublic:
    """Something happened to a run: pause, resume, cancel..., with its reason."""
    return svc.add_event(session=session, flow_run_id=flow_run_id, event=body)
