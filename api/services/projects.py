"""Tiers, owners, projects, their status machine, and clip-compile results."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlmodel import Session, col

from api.core.db import upsert
from api.models import (
    MEDIA,
    OWNERS,
    TIERS,
    Clip,
    Media,
    Owner,
    Project,
    RenderUsage,
    Tier,
    uri_key,
    utcnow,
)
from api.schemas import (
    BackfillKind,
    BatchRequest,
    BatchResult,
    ClipCompileResult,
    CompilationContext,
    ContextClip,
    FailureItem,
    MediaPublic,
    ProjectCreate,
    ProjectPublic,
    ProjectStatus,
    ProjectStatusUpdate,
    TierIn,
    TierPublic,
)
from api.services.errors import Conflict, NotFound
from api.services.idempotency import claim_key, remember_response, request_fingerprint
from api.services.ledger import clear_failures, record_invalid
from api.services.outcome import Outcome, dedupe

#: The only moves `PUT /projects/{id}/status` allows; anything else is a 409.
TRANSITIONS: dict[ProjectStatus, set[ProjectStatus]] = {
    ProjectStatus.DRAFT: {ProjectStatus.QUEUED},
    ProjectStatus.QUEUED: {ProjectStatus.COMPILING},
    ProjectStatus.COMPILING: {ProjectStatus.FAILED},
    ProjectStatus.FAILED: {ProjectStatus.QUEUED},
    ProjectStatus.COMPILED: set(),
}

DEFAULT_TIER = "free"
#: The backfill kind of this module: its failure ledger rows carry this kind.
KIND = BackfillKind.CLIP_COMPILE


def put_tier(*, session: Session, name: str, tier_in: TierIn) -> TierPublic:
    """Create or change a tier in one upsert: two first PUTs of a name at once both succeed
    (the last one's values stay), instead of both inserting."""
    values = tier_in.model_dump()
    stmt = upsert(session, TIERS).values(name=name, **values)
    session.execute(stmt.on_conflict_do_update(index_elements=[TIERS.c.name], set_=values))
    session.commit()
    return TierPublic.model_validate(values | {"name": name})


def _owner(session: Session, name: str, tier_name: str | None) -> int:
    """The owner's id, created on first use, its tier set when given; the row stays locked
    to the end of the transaction (the upsert locks it on PostgreSQL)."""
    if tier_name is not None and session.get(Tier, tier_name) is None:
        raise NotFound(f"Tier {tier_name!r} not found")
    stmt = upsert(session, OWNERS).values(name=name, tier_name=tier_name or DEFAULT_TIER)
    # ON CONFLICT: a concurrent first use of the same name waits for the other insert, then
    # updates its row (tier given) or leaves it (no tier; a no-op update still locks it).
    keep = OWNERS.c.tier_name if tier_name is None else stmt.excluded.tier_name
    owner_id = session.execute(
        stmt.on_conflict_do_update(
            index_elements=[OWNERS.c.name], set_={"tier_name": keep}
        ).returning(OWNERS.c.id)
    ).scalar_one()
    return int(owner_id)


def create_project(*, session: Session, project_in: ProjectCreate) -> Project:
    """A project with its ordered clips; its owner is created on first use."""
    wanted = {c.media_id for c in project_in.clips} | {
        m
        for m in (
            project_in.intro_media_id,
            project_in.outro_media_id,
            project_in.transition_media_id,
        )
        if m is not None
    }
    known = set(session.scalars(select(col(Media.id)).where(col(Media.id).in_(wanted))))
    if missing := sorted(wanted - known):
        raise NotFound(f"Media not found: {', '.join(map(str, missing))}")
    project = Project(
        name=project_in.name,
        owner_id=_owner(session, project_in.owner, project_in.tier),
        status=project_in.status.value,
        intro_media_id=project_in.intro_media_id,
        outro_media_id=project_in.outro_media_id,
        transition_media_id=project_in.transition_media_id,
        height=project_in.height,
        fps=project_in.fps,
    )
    session.add(project)
    session.flush()
    session.add_all(
        Clip(project_id=project.id, position=i, media_id=c.media_id, start=c.start, end=c.end)  # type: ignore[arg-type]
        for i, c in enumerate(project_in.clips)
    )
    session.commit()
    return project


def project_public(session: Session, project: Project) -> ProjectPublic:
    owner = session.get(Owner, project.owner_id)
    assert owner is not None
    return ProjectPublic.model_validate(project.model_dump() | {"owner": owner.name})


def get_project(*, session: Session, project_id: int) -> Project:
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound("Project not found")
    return project


def _lease_expired(project: Project, lease_seconds: float) -> bool:
    updated = project.updated_at
    if updated.tzinfo is None:  # SQLite hands back naive UTC
        updated = updated.replace(tzinfo=UTC)
    return updated < utcnow() - timedelta(seconds=lease_seconds)


def update_status(
    *,
    session: Session,
    project_id: int,
    update: ProjectStatusUpdate,
    lease_seconds: float,
    idempotency_key: str | None,
) -> ProjectPublic:
    """`set_status`, exactly once per Idempotency-Key: a claim whose answer was lost and is
    sent again gets its own answer back, not a 409 from its own first attempt."""
    if idempotency_key is not None:
        scope = f"PUT /projects/{project_id}/status"
        fingerprint = request_fingerprint(scope, update)
        stored = claim_key(session, idempotency_key, fingerprint, ProjectPublic)
        if stored is not None:
            return stored
    project = set_status(
        session=session,
        project_id=project_id,
        status=update.status,
        reason=update.reason,
        lease_seconds=lease_seconds,
        commit=False,
    )
    public = project_public(session, project)
    if idempotency_key is not None:
        remember_response(session, idempotency_key, public)
    session.commit()
    return public


def set_status(
    *,
    session: Session,
    project_id: int,
    status: ProjectStatus,
    reason: str | None,
    lease_seconds: float,
    commit: bool = True,
) -> Project:
    """Move a project along TRANSITIONS; re-claiming a stale `compiling` lease is allowed."""
    project = session.scalars(
        select(Project).where(Project.id == project_id).with_for_update()  # type: ignore[arg-type]
    ).first()
    if project is None:
        raise NotFound("Project not found")
    current = ProjectStatus(project.status)
    reclaim = (
        current is ProjectStatus.COMPILING
        and status is ProjectStatus.COMPILING
        and _lease_expired(project, lease_seconds)
    )
    if status not in TRANSITIONS[current] and not reclaim:
        raise Conflict(f"Cannot move a project from {current} to {status}")
    if current is ProjectStatus.FAILED and status is ProjectStatus.QUEUED:
        # An operator's requeue is a fresh start: the project leaves quarantine too.
        clear_failures(session, KIND, [project_id])
    project.status = status.value
    project.reason = reason if status is ProjectStatus.FAILED else None
    project.revision += 1
    project.updated_at = utcnow()
    session.add(project)
    if commit:
        session.commit()
    else:
        session.flush()
    return project


def _month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def remaining_render_seconds(session: Session, owner_id: int, tier: Tier) -> float:
    used = session.scalar(
        select(func.coalesce(func.sum(RenderUsage.seconds), 0.0)).where(
            RenderUsage.owner_id == owner_id,  # type: ignore[arg-type]
            RenderUsage.created_at >= _month_start(utcnow()),  # type: ignore[arg-type]
        )
    )
    return max(0.0, tier.monthly_render_seconds - float(used or 0.0))


def compilation_context(*, session: Session, project_id: int) -> CompilationContext:
    """Everything one render needs, in a fixed number of queries (no N+1)."""
    project = get_project(session=session, project_id=project_id)
    owner = session.get(Owner, project.owner_id)
    assert owner is not None
    tier = session.get(Tier, owner.tier_name)
    assert tier is not None
    rows = session.execute(
        select(Clip, Media)
        .join(Media, Media.id == Clip.media_id)  # type: ignore[arg-type]
        .where(Clip.project_id == project_id)  # type: ignore[arg-type]
        .order_by(Clip.position)  # type: ignore[arg-type]
    ).all()
    extra_ids = [
        m
        for m in (project.intro_media_id, project.outro_media_id, project.transition_media_id)
        if m is not None
    ]
    extras = {
        m.id: MediaPublic.model_validate(m)
        for m in session.scalars(select(Media).where(Media.id.in_(extra_ids)))  # type: ignore[union-attr]
    }
    return CompilationContext(
        project=ProjectPublic.model_validate(project.model_dump() | {"owner": owner.name}),
        clips=[
            ContextClip(
                position=clip.position,
                start=clip.start,
                end=clip.end,
                media=MediaPublic.model_validate(media),
            )
            for clip, media in rows
        ],
        intro=extras.get(project.intro_media_id),
        outro=extras.get(project.outro_media_id),
        transition=extras.get(project.transition_media_id),
        tier=TierPublic.model_validate(tier),
        remaining_render_seconds=remaining_render_seconds(session, owner.id, tier),  # type: ignore[arg-type]
    )


def apply_clip_compile(*, session: Session, batch: BatchRequest[ClipCompileResult]) -> BatchResult:
    """Link each output as a media record, mark the project compiled, count usage once."""
    outcome = Outcome()
    kept = dedupe(batch.items, outcome, key="project_id")
    projects = {
        p.id: p
        for p in session.scalars(
            select(Project)
            .where(Project.id.in_([i.project_id for i in kept]))  # type: ignore[union-attr]
            .order_by(Project.id)  # type: ignore[arg-type]
            .with_for_update()
        )
    }
    # The quota check reads the owner's usage and then adds to it: lock the owners (after the
    # projects, both in id order) so concurrent results of one owner are checked one at a
    # time, each seeing the usage the one before committed (PostgreSQL; SQLite's write lock
    # serialises every write transaction anyway).
    owners = {
        o.id: o
        for o in session.scalars(
            select(Owner)
            .where(col(Owner.id).in_(sorted({p.owner_id for p in projects.values()})))
            .order_by(col(Owner.id))
            .with_for_update()
        )
    }
    now = utcnow()
    done: list[int] = []
    for item in kept:
        project = projects.get(item.project_id)
        if project is None:
            outcome.reject(item.project_id, "project not found")
            continue
        status = ProjectStatus(project.status)
        if status is ProjectStatus.COMPILED:
            output = session.get(Media, project.output_media_id)
            if output is not None and output.sha256 == item.hash:
                outcome.unchanged.append(item.project_id)
            else:
                outcome.reject(item.project_id, "project is already compiled")
            continue
        if status not in (ProjectStatus.COMPILING, ProjectStatus.QUEUED):
            outcome.reject(item.project_id, f"project is {status}, not compiling")
            continue
        owner = owners[project.owner_id]
        tier = session.get(Tier, owner.tier_name)
        assert owner.id is not None and tier is not None
        remaining = remaining_render_seconds(session, owner.id, tier)
        if item.render_seconds > remaining + 1e-6:
            outcome.reject_invalid(
                item.project_id,
                f"render quota exceeded: {item.render_seconds:g} s needed, {remaining:g} s left",
            )
            continue
        key = uri_key(item.output_uri)
        media = _media_by_key(session, key)
        inserted = False
        if media is None and not batch.dry_run:
            media, inserted = _insert_output(session, item, key, now)
        if media is not None and media.sha256 != item.hash:
            # Output names carry a content key: the same name with other bytes is another file.
            outcome.reject_invalid(
                item.project_id, f"output_uri is already used by record {media.id}"
            )
            continue
        outcome.changes.append({"id": item.project_id})
        if batch.dry_run:
            continue
        assert media is not None
        if not inserted:  # an existing record of these bytes: this is a write to it
            media.revision += 1
        media.sqlmodel_update(
            {
                "sha256": item.hash,
                "sha256_version": media.sha256_version or 1,
                "size_bytes": item.size_bytes,
                "duration": item.duration,
                "duration_version": media.duration_version or 1,
                "updated_at": now,
            }
        )
        session.add(media)
        session.flush()
        project.sqlmodel_update(
            {
                "status": ProjectStatus.COMPILED.value,
                "reason": None,
                "output_media_id": media.id,
                "thumbnail_uri": item.thumbnail_uri,
                "compile_version": item.compute_version,
                "revision": project.revision + 1,
                "updated_at": now,
            }
        )
        session.add(project)
        session.add(
            RenderUsage(project_id=item.project_id, owner_id=owner.id, seconds=item.render_seconds)
        )
        session.flush()
        done.append(item.project_id)
    if not batch.dry_run:
        clear_failures(session, KIND, done + outcome.unchanged)
        record_invalid(session=session, kind=KIND, outcome=outcome, refuse=fail_projects)
    return outcome.result(dry_run=batch.dry_run)


def _media_by_key(session: Session, key: str) -> Media | None:
    return session.scalars(select(Media).where(col(Media.uri_key) == key)).first()


def _insert_output(
    session: Session, item: ClipCompileResult, key: str, now: datetime
) -> tuple[Media | None, bool]:
    """Insert the output's media record and return it, and whether this inserted it. ON
    CONFLICT DO NOTHING: a concurrent request that registered the same uri first wins (this
    waits for its commit), and its record is returned instead."""
    values = {
        "uri": item.output_uri,
        "uri_key": key,
        "media_type": "video",
        "sha256": item.hash,
        "sha256_version": 1,
        "size_bytes": item.size_bytes,
        "duration": item.duration,
        "duration_version": 1,
        "schema_version": 1,
        "revision": 1,
        "created_at": now,
        "updated_at": now,
    }
    stmt = upsert(session, MEDIA).values(**values)
    new_id = session.execute(
        stmt.on_conflict_do_nothing(index_elements=[MEDIA.c.uri_key]).returning(MEDIA.c.id)
    ).scalar()
    return _media_by_key(session, key), new_id is not None


def fail_projects(
    *, session: Session, items: Sequence[FailureItem], dry_run: bool
) -> dict[int, str]:
    """Mark queued or compiling projects failed, the error as reason; return the refused."""
    projects = {
        p.id: p
        for p in session.scalars(
            select(Project)
            .where(col(Project.id).in_([i.record_id for i in items]))
            .order_by(col(Project.id))
            .with_for_update()
        )
    }
    now = utcnow()
    refused: dict[int, str] = {}
    for item in items:
        project = projects.get(item.record_id)
        if project is None:
            refused[item.record_id] = "project not found"
        elif project.status not in (ProjectStatus.QUEUED.value, ProjectStatus.COMPILING.value):
            refused[item.record_id] = f"project is {project.status}, not queued or compiling"
        elif not dry_run:
            project.sqlmodel_update(
                {
                    "status": ProjectStatus.FAILED.value,
                    "reason": item.error,
                    "revision": project.revision + 1,
                    "updated_at": now,
                }
            )
            session.add(project)
    return refused
