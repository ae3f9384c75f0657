"""Plans: the records a run would process, stored once with their revisions; then paged by
the run that applies it, each record marked todo, changed since the plan, or done."""

from __future__ import annotations

import json
import secrets
import string
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, insert, literal, select
from sqlmodel import Session

from api.models import FAILURES, ITEMS, Plan
from api.schemas import (
    BackfillKind,
    HashAlgorithm,
    PendingFilter,
    PlanCounts,
    PlanCreate,
    PlanItemsPage,
    PlanParameters,
    PlanPublic,
    PlanRecord,
    PlanWorkItem,
    PlanWorkPage,
    PlanWorkQuery,
    ReprocessMode,
)
from api.services.errors import DomainError, NotFound
from api.services.kinds import KINDS
from api.services.work import PendingRequest, check_filter, pending_query

FIRST_PAGE = PlanWorkQuery()
#: How many of its first records `GET /plans/{id}` shows.
FIRST_RECORDS = 20
PLAN_ID_ALPHABET = string.ascii_letters + string.digits
#: The modes a plan can be made for today.
MODES = (ReprocessMode.MISSING, ReprocessMode.FAILED, ReprocessMode.STALE)


class UnsupportedMode(DomainError):
    """A mode plans do not take (yet)."""

    status_code = 422


def new_plan_id() -> str:
    """8 letters and digits: nothing a shell or an option parser reads as a flag ('-x')."""
    return "".join(secrets.choice(PLAN_ID_ALPHABET) for _ in range(8))


def create_plan(
    *,
    session: Session,
    plan_in: PlanCreate,
    token_name: str,
    max_attempts: int,
    lease_seconds: float,
) -> PlanPublic:
    """Store the records a run would process now (the query of `/pending`) with their
    revisions, in one INSERT ... SELECT: no row goes through Python."""
    if plan_in.mode not in MODES:
        modes = ", ".join(m.value for m in MODES)
        raise UnsupportedMode(f"plans take mode {modes}, not {plan_in.mode.value}")
    p = plan_in.parameters
    stale = plan_in.mode is ReprocessMode.STALE
    where = PendingFilter(
        mode=plan_in.mode,
        compute_version=plan_in.compute_version if stale else None,
        media_type=p.media_type,
        algorithm=p.algorithm,
        shard_index=p.shard_index,
        shard_count=p.shard_count,
    )
    check_filter(plan_in.kind, where)
    query = pending_query(
        PendingRequest(
            kind=plan_in.kind,
            after_id=0,
            limit=1,
            max_attempts=max_attempts,
            lease_seconds=lease_seconds,
            where=where,
        )
    )
    plan = Plan(
        id=new_plan_id(),
        kind=plan_in.kind.value,
        mode=plan_in.mode.value,
        compute_version=plan_in.compute_version,
        parameters=p.model_dump_json(exclude_defaults=True),
        count=0,
        token_name=token_name,
    )
    session.add(plan)
    session.flush()
    table = KINDS[plan_in.kind].table
    rows = query.with_only_columns(literal(plan.id), table.c.id, table.c.revision).limit(p.limit)
    if p.limit is None:
        rows = rows.order_by(None)
    session.execute(insert(ITEMS).from_select(["plan_id", "record_id", "revision"], rows))
    # Counted over the plan's key (psycopg reports no rowcount for INSERT ... SELECT here).
    count_stmt = select(func.count()).select_from(ITEMS).where(ITEMS.c.plan_id == plan.id)
    plan.count = session.execute(count_stmt).scalar_one()
    session.commit()
    count = plan.count
    counts = PlanCounts(planned=count, todo=count, changed=0, done=0)
    return _public(plan, counts, _first(session, plan.id))


def get_plan(*, session: Session, plan_id: str, lease_seconds: float) -> PlanPublic:
    """The plan, its first records, and how its records stand now."""
    plan = _plan(session, plan_id)
    status = _status(plan, lease_seconds).label("status")
    stmt = select(status, func.count()).select_from(_joined(plan)).where(ITEMS.c.plan_id == plan.id)
    by_status = dict(session.execute(stmt.group_by(status)).tuples().all())
    counts = PlanCounts(planned=plan.count, **{s: by_status.get(s, 0) for s in PLAN_STATUSES})
    return _public(plan, counts, _first(session, plan.id))


def plan_items_page(*, session: Session, plan_id: str, after_id: int, limit: int) -> PlanItemsPage:
    """The planned records and their revisions, by id."""
    plan = _plan(session, plan_id)
    stmt = (
        select(ITEMS.c.record_id, ITEMS.c.revision)
        .where(ITEMS.c.plan_id == plan.id, ITEMS.c.record_id > after_id)
        .order_by(ITEMS.c.record_id)
        .limit(limit + 1)
    )
    rows = [PlanRecord(record_id=r, revision=v) for r, v in session.execute(stmt).tuples()]
    more = len(rows) > limit
    return PlanItemsPage(
        plan_id=plan.id,
        items=rows[:limit],
        next_after_id=rows[limit - 1].record_id if more else None,
    )


def plan_work_page(
    *, session: Session, plan_id: str, lease_seconds: float, page: PlanWorkQuery = FIRST_PAGE
) -> PlanWorkPage:
    """One page of a plan as a run takes it: each planned record with what `/pending` sends,
    its planned revision, and its status now (todo, changed since the plan, done)."""
    plan = _plan(session, plan_id)
    kind = BackfillKind(plan.kind)
    spec = KINDS[kind]
    table = spec.table
    stmt = (
        select(
            table.c.id,
            table.c.revision,
            *(table.c[c] for c in spec.details),
            func.coalesce(FAILURES.c.attempts, 0).label("attempts"),
            ITEMS.c.revision.label("planned_revision"),
            _status(plan, lease_seconds).label("status"),
        )
        .select_from(_joined(plan))
        .where(ITEMS.c.plan_id == plan.id, ITEMS.c.record_id > page.after_id)
    )
    if page.shard_count > 1:
        stmt = stmt.where(ITEMS.c.record_id % page.shard_count == page.shard_index)
    limit = page.limit
    rows = session.execute(stmt.order_by(ITEMS.c.record_id).limit(limit + 1)).mappings().all()
    items = [PlanWorkItem.model_validate({"record_id": r["id"], **r}) for r in rows[:limit]]
    return PlanWorkPage(
        plan_id=plan.id,
        kind=kind,
        items=items,
        next_after_id=items[-1].record_id if len(rows) > limit else None,
    )


#: A planned record now: to do as planned, changed since the plan, or done.
PLAN_STATUSES = ("todo", "changed", "done")


def _plan(session: Session, plan_id: str) -> Plan:
    plan = session.get(Plan, plan_id)
    if plan is None:
        raise NotFound(f"Plan not found: {plan_id[:32]!r}")
    return plan


def _joined(plan: Plan) -> Any:
    """The plan's items, each with its record and its ledger row of this kind (or NULLs)."""
    table = KINDS[BackfillKind(plan.kind)].table
    return ITEMS.join(table, table.c.id == ITEMS.c.record_id).outerjoin(
        FAILURES, and_(FAILURES.c.kind == plan.kind, FAILURES.c.record_id == ITEMS.c.record_id)
    )


def _status(plan: Plan, lease_seconds: float) -> ColumnElement[str]:
    """`done` when the record is no longer to do for the plan's mode (a retry of the run
    finds its own writes done, not changed), else `changed` when its revision moved since
    the plan, else `todo`."""
    spec = KINDS[BackfillKind(plan.kind)]
    algorithm = PlanParameters.model_validate_json(plan.parameters).algorithm
    todo = spec.todo(algorithm or HashAlgorithm.SHA256, lease_seconds)
    if plan.mode == ReprocessMode.FAILED:
        todo = spec.failed(todo)
    elif plan.mode == ReprocessMode.STALE and spec.version is not None:
        todo = spec.version(algorithm or HashAlgorithm.SHA256) < plan.compute_version
    return case(
        (~todo, literal("done")),
        (spec.table.c.revision != ITEMS.c.revision, literal("changed")),
        else_=literal("todo"),
    )


def _first(session: Session, plan_id: str) -> list[PlanRecord]:
    return plan_items_page(session=session, plan_id=plan_id, after_id=0, limit=FIRST_RECORDS).items


def _public(plan: Plan, counts: PlanCounts, items: list[PlanRecord]) -> PlanPublic:
    return PlanPublic(
        id=plan.id,
        kind=BackfillKind(plan.kind),
        mode=ReprocessMode(plan.mode),
        compute_version=plan.compute_version,
        parameters=PlanParameters.model_validate(json.loads(plan.parameters)),
        count=plan.count,
        token_name=plan.token_name,
        created_at=plan.created_at,
        counts=counts,
        items=items,
    )
