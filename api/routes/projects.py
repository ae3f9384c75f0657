from typing import Annotated

from fastapi import APIRouter, Path

from api.deps import Admin, BatchDep, Caller, ReadSessionDep, SessionDep, SettingsDep, errors
from api.schemas import (
    CompilationContext,
    Name,
    ProjectCreate,
    ProjectCreated,
    ProjectPublic,
    ProjectStatus,
    ProjectStatusUpdate,
    TierIn,
    TierPublic,
)
from api.services import projects as svc

router = APIRouter(tags=["projects"], responses=errors(401, 422, 503))

ProjectId = Annotated[int, Path(ge=1, le=2**63 - 1)]


@router.put("/tiers/{name}", responses=errors(400, 403, 409, 413, 415))
def update_tier(
    session: SessionDep, _caller: Admin, name: Annotated[Name, Path()], body: TierIn
) -> TierPublic:
    """Create or change a tier."""
    return svc.put_tier(session=session, name=name, tier_in=body)


@router.post("/projects", status_code=201, responses=errors(400, 403, 404, 409, 413, 415))
def create_project(session: SessionDep, _caller: Admin, body: ProjectCreate) -> ProjectCreated:
    """Create a project with its ordered clips; the owner is created on first use."""
    project = svc.create_project(session=session, project_in=body)
    return ProjectCreated(id=project.id, status=ProjectStatus(project.status))


@router.get("/projects/{project_id}", responses=errors(404))
def read_project(session: ReadSessionDep, _caller: Caller, project_id: ProjectId) -> ProjectPublic:
    """The project: status, reason when failed, output media and thumbnail."""
    return svc.project_public(session, svc.get_project(session=session, project_id=project_id))


@router.put("/projects/{project_id}/status", responses=errors(400, 403, 404, 409, 413, 415))
def update_project_status(
    session: SessionDep,
    _caller: Admin,
    settings: SettingsDep,
    batch: BatchDep,
    project_id: ProjectId,
    body: ProjectStatusUpdate,
) -> ProjectPublic:
    """draft->queued, queued->compiling, compiling->failed, failed->queued; else 409.

    With an Idempotency-Key, a repeated request gets the first one's answer."""
    return svc.update_status(
        session=session,
        project_id=project_id,
        update=body,
        lease_seconds=settings.COMPILE_LEASE_SECONDS,
        idempotency_key=batch.idempotency_key,
    )


@router.get("/projects/{project_id}/compilation-context", responses=errors(403, 404))
def read_compilation_context(
    session: ReadSessionDep, _caller: Admin, project_id: ProjectId
) -> CompilationContext:
    """Project, ordered clips with their media, extras, tier limits, remaining quota."""
    return svc.compilation_context(session=session, project_id=project_id)
