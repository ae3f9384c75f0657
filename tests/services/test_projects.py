"""Projects: the status machine and clip-compile results against the render quota."""

from __future__ import annotations

import pytest
from sqlmodel import Session

from api.models import Project
from api.schemas import (
    BackfillKind,
    BatchResult,
    ClipCompileBatch,
    ClipCompileResult,
    ProjectStatus,
    Rejection,
)
from api.services.errors import Conflict, NotFound
from api.services.projects import (
    apply_clip_compile,
    compilation_context,
    get_project,
    set_status,
)
from tests.services.utils import add_project, ledger, stored

KIND = BackfillKind.CLIP_COMPILE


def compiled(project_id: int, render_seconds: float) -> ClipCompileBatch:
    return ClipCompileBatch(
        items=[
            ClipCompileResult(
                project_id=project_id,
                output_uri=f"out/{project_id}.mp4",
                thumbnail_uri=f"out/{project_id}.jpg",
                duration=2.0,
                hash="ab" * 32,
                size_bytes=1234,
                render_seconds=render_seconds,
            )
        ]
    )


def status(session: Session, project_id: int) -> tuple[str, str | None]:
    session.expire_all()
    project = get_project(session=session, project_id=project_id)
    return project.status, project.reason


def test_apply_clip_compile_links_the_output_and_counts_usage(session: Session) -> None:
    pid = add_project(session, render_seconds=10.0)
    result = apply_clip_compile(session=session, batch=compiled(pid, 4.0))
    session.commit()
    assert result == BatchResult(applied=1)
    project = session.get(Project, pid)
    assert project is not None and project.output_media_id is not None
    assert (project.status, project.thumbnail_uri) == ("compiled", f"out/{pid}.jpg")
    output = stored(session, project.output_media_id)
    assert (output.uri, output.sha256, output.duration) == (f"out/{pid}.mp4", "ab" * 32, 2.0)
    assert (output.sha256_version, project.compile_version) == (1, 1)
    context = compilation_context(session=session, project_id=pid)
    assert context.remaining_render_seconds == pytest.approx(6.0)


def test_apply_clip_compile_over_quota_fails_the_project(session: Session) -> None:
    pid = add_project(session, render_seconds=10.0)
    result = apply_clip_compile(session=session, batch=compiled(pid, 20.0))
    session.commit()
    reason = "render quota exceeded: 20 s needed, 10 s left"
    assert result.rejected == [Rejection(record_id=pid, reason=reason)]
    assert status(session, pid) == ("failed", reason)
    assert ledger(session, KIND) == {pid: 1}


def test_set_status_refuses_a_move_outside_the_machine(session: Session) -> None:
    pid = add_project(session)
    with pytest.raises(Conflict, match="Cannot move a project from queued to compiled"):
        set_status(
            session=session,
            project_id=pid,
            status=ProjectStatus.COMPILED,
            reason=None,
            lease_seconds=60,
        )


def test_set_status_of_an_unknown_project_is_not_found(session: Session) -> None:
    with pytest.raises(NotFound, match="Project not found"):
        set_status(
            session=session,
            project_id=987_654,
            status=ProjectStatus.QUEUED,
            reason=None,
            lease_seconds=60,
        )


def test_requeue_takes_a_failed_project_out_of_the_ledger(session: Session) -> None:
    pid = add_project(session, render_seconds=1.0)
    apply_clip_compile(session=session, batch=compiled(pid, 5.0))
    session.commit()
    assert ledger(session, KIND) == {pid: 1}
    set_status(
        session=session, project_id=pid, status=ProjectStatus.QUEUED, reason=None, lease_seconds=60
    )
    assert status(session, pid) == ("queued", None)
    assert ledger(session, KIND) == {}
