"""Factories and read-backs for service tests."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from api.core.db import read_only
from api.models import BackfillFailure, Media, uri_key
from api.schemas import BackfillKind, ClipIn, PendingFilter, ProjectCreate, TierIn
from api.services.projects import create_project, put_tier
from api.services.work import PendingRequest, pending_page


def add_media(session: Session, n: int = 1, *, prefix: str = "s", **fields: Any) -> list[int]:
    """Insert `n` current audio records (committed) and return their ids."""
    rows = [
        Media(
            uri=f"{prefix}/{i:03d}.wav",
            uri_key=uri_key(f"{prefix}/{i:03d}.wav"),
            **({"media_type": "audio", "size_bytes": 100 + i} | fields),
        )
        for i in range(n)
    ]
    session.add_all(rows)
    session.commit()
    return [row.id for row in rows if row.id is not None]


def stored(session: Session, media_id: int) -> Media:
    """The record as committed, read in a transaction of its own."""
    with Session(read_only(session.get_bind())) as reader:  # type: ignore[arg-type]
        media = reader.get(Media, media_id)
        assert media is not None
        return media


def ledger(session: Session, kind: str) -> dict[int, int]:
    """Committed failure-ledger attempts of `kind`, by record id."""
    with Session(read_only(session.get_bind())) as reader:  # type: ignore[arg-type]
        rows = reader.execute(
            select(BackfillFailure.record_id, BackfillFailure.attempts).where(
                BackfillFailure.kind == kind  # type: ignore[arg-type]
            )
        )
        return dict(rows.tuples().all())


def add_project(session: Session, *, render_seconds: float = 3600.0) -> int:
    """A queued one-clip project of owner `ann` on a tier with this monthly quota."""
    put_tier(
        session=session,
        name="test",
        tier_in=TierIn(max_clips=10, max_height=720, monthly_render_seconds=render_seconds),
    )
    [clip] = add_media(session, prefix="clips", media_type="video")
    project = create_project(
        session=session,
        project_in=ProjectCreate(
            name="p", owner="ann", tier="test", clips=[ClipIn(media_id=clip, start=0, end=2)]
        ),
    )
    assert project.id is not None
    return project.id


def pending_ids(session: Session, kind: BackfillKind, where: PendingFilter) -> list[int]:
    """The record ids of the first `/pending` page (up to 100) that `where` selects."""
    page = pending_page(
        session,
        PendingRequest(
            kind=kind,
            after_id=0,
            limit=100,
            max_attempts=3,
            lease_seconds=60,
            where=where,
        ),
    )
    return [item.record_id for item in page.items]
