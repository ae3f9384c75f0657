"""Plans: make one (what a run would process now), read it, page it, and page it as work."""

from typing import Annotated

from fastapi import APIRouter, Path, Query

from api.deps import Admin, Caller, ReadSessionDep, SessionDep, SettingsDep, errors, known_query
from api.routes.paging import AfterId, Limit
from api.schemas import PlanCreate, PlanId, PlanItemsPage, PlanPublic, PlanWorkPage, PlanWorkQuery
from api.services import plans as svc

router = APIRouter(prefix="/plans", tags=["plans"], responses=errors(401, 422, 503))

PlanPath = Annotated[PlanId, Path()]


@router.post("", status_code=201, responses=errors(400, 403, 413, 415))
def create_plan(
    session: SessionDep, caller: Admin, settings: SettingsDep, body: PlanCreate
) -> PlanPublic:
    """Store the records a run of `kind` would process now, each with its revision."""
    return svc.create_plan(
        session=session,
        plan_in=body,
        token_name=caller.name,
        max_attempts=settings.MAX_ATTEMPTS,
        lease_seconds=settings.COMPILE_LEASE_SECONDS,
    )


@router.get("/{plan_id}", responses=errors(404))
def read_plan(
    session: ReadSessionDep, _caller: Caller, settings: SettingsDep, plan_id: PlanPath
) -> PlanPublic:
    """The plan, its first records, and its records now: todo, changed since it, done."""
    return svc.get_plan(
        session=session, plan_id=plan_id, lease_seconds=settings.COMPILE_LEASE_SECONDS
    )


@router.get(
    "/{plan_id}/items",
    responses=errors(404),
    dependencies=[known_query("after_id", "limit")],
)
def read_plan_items(
    session: ReadSessionDep,
    _caller: Caller,
    plan_id: PlanPath,
    after_id: AfterId = 0,
    limit: Limit = 100,
) -> PlanItemsPage:
    """The planned records and their revisions, by id; pass `next_after_id` back."""
    return svc.plan_items_page(session=session, plan_id=plan_id, after_id=after_id, limit=limit)


@router.get(
    "/{plan_id}/work",
    responses=errors(403, 404),
    dependencies=[known_query("after_id", "limit", "shard_index", "shard_count")],
)
def read_plan_work(
    session: ReadSessionDep,
    _caller: Admin,
    settings: SettingsDep,
    plan_id: PlanPath,
    query: Annotated[PlanWorkQuery, Query()],
) -> PlanWorkPage:
    """One page of the plan as a run takes it (the `/pending` of a run with `plan_id`):
    each record's planned revision and status now (todo, changed, done)."""
    return svc.plan_work_page(
        session=session,
        plan_id=plan_id,
        lease_seconds=settings.COMPILE_LEASE_SECONDS,
        page=query,
    )
