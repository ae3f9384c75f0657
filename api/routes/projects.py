from typing import Annotated

from fastapi import APIRouter, Path

from api.deps import Admin, Caller, SessionDep, SettingsDep
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

router = APIRouter(tags=["projects"])

ProjectId = Annotated[int, Path(ge=1, le=2**63 - 1)]


@router.put("/tiers/{name}")
def update_tier(
    session: SessionDep, _caller: Admin, name: Annotated[Name, Path()], body: TierIn
) -> TierPublic:
    """Create or change a tier."""
    return svc.put_tier(session=session, name=name, tier_in=body)


@router.post("/projects", status_code=201)
def create_project(session: SessionDep, _caller: Admin, body: ProjectCreate) -> ProjectCreated:
    """Create a project with its ordered clips; the owner is created on first use."""
    project = svc.create_project(session=session, project_in=body)
    return ProjectCreated(id=project.id, status=ProjectStatus(project.status))


@router.get("/projects/{project_id}")
def read_project(session: SessionDep, _caller: Caller, project_id: ProjectId) -> ProjectPublic:
    """The project: status, reason when failed, output media and thumbnail."""
    return svc.project_public(session, svc.get_project(session=session, project_id=project_id))


@router.put("/projects/{project_id}/status")
def update_project_status(
    session: SessionDep,
    _caller: Admin,
    settings: SettingsDep,
    project_id: ProjectId,
    body: ProjectStatusUpdate,
) -> ProjectPublic:
    """draft->queued, queued->compiling, compiling->failed, failed->queued; else 409."""
    project = svc.set_status(
        session=session,
        project_id=project_id,
        status=body.status,
        reason=body.reason,
        lease_seconds=settings.COMPILE_LEASE_SECONDS,
    )
    return svc.project_public(session, project)


@router.get("/projects/{project_id}/compilation-context")
def read_compilation_context(
    session: SessionDep, _caller: Admin, project_id: ProjectId
) -> CompilationContext:
    """Project, ordered clips with their media, extras, tier limits, remaining quota."""
    return svc.compilation_context(session=session, project_id=project_id)
