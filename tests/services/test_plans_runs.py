"""Plans (made in one INSERT ... SELECT, paged as work) and the record of every run."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlmodel import Session

from api.schemas import (
    BackfillKind,
    HashAlgorithm,
    PlanCreate,
    PlanParameters,
    PlanWorkQuery,
    ReprocessMode,
    RunEnd,
    RunEventIn,
    RunStart,
)
from api.services.errors import NotFound
from api.services.plans import (
    UnsupportedMode,
    create_plan,
    get_plan,
    new_plan_id,
    plan_work_page,
)
from api.services.runs import add_event, end_run, list_runs, start_run
from tests.services.utils import add_media

KIND = BackfillKind.MEDIA_DURATION


def make_plan(session: Session, **fields: object) -> str:
    plan_in = PlanCreate.model_validate({"kind": KIND} | fields)
    plan = create_plan(
        session=session, plan_in=plan_in, token_name="ops", max_attempts=3, lease_seconds=60
    )
    return plan.id


def test_a_plan_holds_what_pending_would_take_with_revisions(session: Session) -> None:
    todo = add_media(session, 5)
    add_media(session, 2, prefix="done", duration=1.0)
    add_media(session, 2, prefix="video", media_type="video")
    plan = create_plan(
        session=session,
        plan_in=PlanCreate(kind=KIND, parameters=PlanParameters(media_type="audio")),
        token_name="ops",
        max_attempts=3,
        lease_seconds=60,
    )
    assert (plan.count, plan.token_name, plan.mode) == (5, "ops", ReprocessMode.MISSING)
    assert [(i.record_id, i.revision) for i in plan.items] == [(r, 1) for r in todo]
    assert plan.parameters == PlanParameters(media_type="audio")

    # One record edited (revision 2), one done since: the work page says so, in id order.
    session.execute(text(f"UPDATE media SET revision = 2 WHERE id = {todo[1]}"))
    session.execute(text(f"UPDATE media SET duration = 3.0, revision = 2 WHERE id = {todo[2]}"))
    session.commit()
    page = plan_work_page(
        session=session, plan_id=plan.id, lease_seconds=60, page=PlanWorkQuery(limit=3)
    )
    assert [(i.record_id, i.status, i.planned_revision) for i in page.items] == [
        (todo[0], "todo", 1),
        (todo[1], "changed", 1),
        (todo[2], "done", 1),
    ]
    assert page.items[0].uri == "s/000.wav" and page.next_after_id == todo[2]
    shard = plan_work_page(
        session=session,
        plan_id=plan.id,
        lease_seconds=60,
        page=PlanWorkQuery(limit=10, shard_index=1, shard_count=2),
    )
    assert [i.record_id for i in shard.items] == [r for r in todo if r % 2 == 1]
    counts = get_plan(session=session, plan_id=plan.id, lease_seconds=60).counts
    assert counts is not None
    assert (counts.planned, counts.todo, counts.changed, counts.done) == (5, 3, 1, 1)


def test_a_failed_plan_takes_the_ledger_and_a_limit_the_first(session: Session) -> None:
    ids = add_media(session, 4)
    session.execute(
        text(
            "INSERT INTO backfill_failures (kind, record_id, attempts, last_error, updated_at) "
            f"VALUES ('media-duration', {ids[3]}, 3, 'bad', CURRENT_TIMESTAMP)"
        )
    )
    session.commit()
    failed = create_plan(
        session=session,
        plan_in=PlanCreate(kind=KIND, mode=ReprocessMode.FAILED),
        token_name="ops",
        max_attempts=3,
        lease_seconds=60,
    )
    assert [i.record_id for i in failed.items] == [ids[3]]
    first = make_plan(session, parameters={"limit": 2})
    assert [
        i.record_id for i in get_plan(session=session, plan_id=first, lease_seconds=60).items
    ] == ids[:2]


def test_hash_plans_keep_their_algorithm(session: Session) -> None:
    [md5] = add_media(session, 1, hash="a" * 32, hash_algorithm="md5")
    plan = create_plan(
        session=session,
        plan_in=PlanCreate(
            kind=BackfillKind.FILE_HASHING,
            parameters=PlanParameters(algorithm=HashAlgorithm.SHA256),
        ),
        token_name="ops",
        max_attempts=3,
        lease_seconds=60,
    )
    assert plan.count == 1 and plan.parameters.algorithm == HashAlgorithm.SHA256
    page = plan_work_page(
        session=session, plan_id=plan.id, lease_seconds=60, page=PlanWorkQuery(limit=10)
    )
    assert [(i.record_id, i.status) for i in page.items] == [(md5, "todo")]


def test_a_stale_plan_holds_the_values_of_older_versions_until_they_are_redone(
    session: Session,
) -> None:
    old = add_media(session, 3, prefix="old", duration=1.0, duration_version=1)
    add_media(session, 2, prefix="new", duration=1.0, duration_version=2)
    add_media(session, 1, prefix="todo")  # no value yet: not stale, missing
    plan_id = make_plan(session, mode="stale", compute_version=2)

    page = plan_work_page(
        session=session, plan_id=plan_id, lease_seconds=60, page=PlanWorkQuery(limit=10)
    )
    assert [(i.record_id, i.status) for i in page.items] == [(r, "todo") for r in old]
    session.execute(text(f"UPDATE media SET duration_version = 2 WHERE id = {old[0]}"))
    session.commit()
    page = plan_work_page(
        session=session, plan_id=plan_id, lease_seconds=60, page=PlanWorkQuery(limit=10)
    )
    assert [i.status for i in page.items] == ["done", "todo", "todo"]


def test_modes_plans_do_not_take_and_unknown_plans_are_refused(session: Session) -> None:
    with pytest.raises(UnsupportedMode, match="plans take mode missing, failed, stale, not all"):
        make_plan(session, mode="all")
    with pytest.raises(NotFound, match="Plan not found"):
        get_plan(session=session, plan_id="nope", lease_seconds=60)
    with pytest.raises(ValueError, match="algorithm applies to file-hashing only"):
        PlanCreate(kind=KIND, parameters=PlanParameters(algorithm=HashAlgorithm.MD5))


def test_a_run_is_recorded_once_per_flow_run_and_a_retry_restarts_it(session: Session) -> None:
    start = RunStart(flow_run_id="fr-1", kind=KIND, parameters={"limit": 5}, dry_run=True)
    first = start_run(session=session, run_in=start, token_name="ops")
    again = start_run(session=session, run_in=start, token_name="ops")
    assert first.id == again.id and again.state == "running" and again.events == []
    ended = end_run(
        session=session,
        flow_run_id="fr-1",
        end=RunEnd(state="failed", reason="boom", applied=3, failed=2),
    )
    assert (ended.state, ended.reason, ended.applied, ended.failed) == ("failed", "boom", 3, 2)
    assert ended.ended_at is not None

    retried = start_run(
        session=session, run_in=start.model_copy(update={"attempt": 2}), token_name="ops"
    )
    assert (retried.state, retried.attempt, retried.ended_at) == ("running", 2, None)
    assert [e.event for e in retried.events] == ["retry"]
    add_event(session=session, flow_run_id="fr-1", event=RunEventIn(event="cancel", reason="ops"))
    cancelled = end_run(session=session, flow_run_id="fr-1", end=RunEnd(state="cancelled"))
    assert (cancelled.state, cancelled.applied) == ("cancelled", 3)  # counts kept

    start_run(
        session=session,
        run_in=RunStart(flow_run_id="fr-2", kind=BackfillKind.VERSION_0),
        token_name="ops",
    )
    page = list_runs(session=session, before_id=None, limit=1)
    assert [r.flow_run_id for r in page.items] == ["fr-2"] and page.next_before_id is not None
    older = list_runs(session=session, before_id=page.next_before_id, limit=5)
    assert [r.flow_run_id for r in older.items] == ["fr-1"]
    assert [(e.event, e.reason) for e in older.items[0].events] == [
        ("retry", "attempt 2"),
        ("cancel", "ops"),
    ]
    assert older.items[0].parameters == {"limit": 5} and older.items[0].dry_run
    assert [
        r.flow_run_id for r in list_runs(session=session, before_id=None, limit=5, kind=KIND).items
    ] == ["fr-1"]
    with pytest.raises(NotFound):
        end_run(session=session, flow_run_id="nope", end=RunEnd(state="completed"))


def test_plan_ids_never_look_like_an_option() -> None:
    ids = {new_plan_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 8 and i.isalnum() and i.isascii() for i in ids)
