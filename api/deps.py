"""Dependency aliases: the session, the settings, the caller and the batch context.

Dependencies that do no I/O are `async def`: FastAPI runs a plain `def` in the thread pool,
and a thread hop per dependency per request is measurable on 1,000-item batches."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Request, status
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy import select
from sqlmodel import Session

from api.core.config import Settings
from api.core.security import hash_token, same_hash
from api.models import ApiToken
from api.schemas import BatchRequest, BatchResult, ErrorBody, ValidationErrorBody
from api.services.batches import ResultT, run_batch


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session for a route that writes (its transactions take SQLite's write lock).

    `async`: making a Session does no I/O (it connects on first use, in the route's thread),
    and closing one after its commit or rollback only hands the connection back; a sync
    generator cost two thread hops per request."""
    with Session(request.app.state.engine, expire_on_commit=False) as session:
        yield session


async def get_read_session(request: Request) -> AsyncIterator[Session]:
    """A session for a route that only reads: never waits for SQLite's write lock."""
    with Session(request.app.state.read_engine, expire_on_commit=False) as session:
        yield session


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SessionDep = Annotated[Session, Depends(get_session)]
ReadSessionDep = Annotated[Session, Depends(get_read_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]

_bearer = HTTPBearer(auto_error=False, description="An API token: `backfill api token create`.")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"}
    )


def get_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiToken:
    """The token's row: 401 when missing, unknown or revoked. Looked up on every request
    (a revocation applies at once), in a read transaction of its own."""
    if credentials is None or not credentials.credentials:
        raise _unauthorized("Not authenticated")
    digest = hash_token(credentials.credentials)
    with Session(request.app.state.read_engine) as session:
        token = session.scalars(select(ApiToken).where(ApiToken.token_hash == digest)).first()  # type: ignore[arg-type]
    if token is None or not same_hash(token.token_hash, digest) or token.revoked_at is not None:
        raise _unauthorized("Invalid or revoked token")
    return token


Caller = Annotated[ApiToken, Depends(get_caller)]


async def require_admin(caller: Caller) -> ApiToken:
    if caller.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="Admin token required")
    return caller


Admin = Annotated[ApiToken, Depends(require_admin)]


@dataclass(frozen=True)
class BatchContext:
    """What a batch route passes on besides its body: the two headers and the metrics hook."""

    idempotency_key: str | None
    flow_run_id: str | None
    observe: Callable[[str, BatchResult], None]

    def run(
        self,
        *,
        session: Session,
        caller: ApiToken,
        kind: str,
        body: BatchRequest[Any],
        apply: Callable[[], ResultT],
        result_type: type[ResultT],
    ) -> ResultT:
        """`run_batch` with this request's headers: audited, exactly once per key."""
        return run_batch(
            session=session,
            kind=kind,
            body=body,
            dry_run=body.dry_run,
            apply=apply,
            result_type=result_type,
            token_name=caller.name,
            idempotency_key=self.idempotency_key,
            flow_run_id=self.flow_run_id,
            observe=self.observe,
        )


#: No control characters (NUL above all: PostgreSQL text cannot hold it). HTTP servers refuse
#: them in headers anyway; an in-process (ASGI) caller may not.
_HEADER_TEXT = r"^[^\x00-\x1f\x7f]*$"


async def get_batch_context(
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            pattern=_HEADER_TEXT,
            description="Makes the batch exactly-once: a replay returns the stored response.",
        ),
    ] = None,
    flow_run_id: Annotated[
        str | None,
        Header(
            alias="X-Prefect-Flow-Run-Id",
            max_length=200,
            pattern=_HEADER_TEXT,
            description="The Prefect flow run that sent the batch; kept in the audit.",
        ),
    ] = None,
) -> BatchContext:
    return BatchContext(
        idempotency_key=idempotency_key,
        flow_run_id=flow_run_id,
        observe=request.app.state.metrics.observe,
    )


BatchDep = Annotated[BatchContext, Depends(get_batch_context)]


def known_query(*names: str) -> DependsParam:
    """A route dependency that answers 422 for a query parameter the route does not know,
    so a misspelt filter is an error instead of silently matching everything."""
    allowed = frozenset(names)

    async def check(request: Request) -> None:
        unknown = sorted(set(request.query_params) - allowed)
        if unknown:
            raise HTTPException(422, detail=f"Unknown query parameter: {', '.join(unknown)[:200]}")

    dependency: DependsParam = Depends(check)
    return dependency


#: Every error status a route may answer, with its body model and what it means.
_ERRORS: dict[int, tuple[type[BaseModel], str]] = {
    400: (ErrorBody, "The body could not be parsed (e.g. not UTF-8)."),
    401: (ErrorBody, "Missing, unknown or revoked token (`WWW-Authenticate: Bearer`)."),
    403: (ErrorBody, "An admin token is required."),
    404: (ErrorBody, "Unknown record, project, tier or backfill kind."),
    409: (ErrorBody, "Conflict with the current state, or an Idempotency-Key reused."),
    413: (ErrorBody, "Request body larger than 16 MiB."),
    415: (ErrorBody, "The body is not `application/json`."),
    422: (ValidationErrorBody, "Validation error: the issues found, or one message."),
    503: (ErrorBody, "Database unavailable; retry later (`Retry-After`)."),
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for the error statuses a route can answer, so the schema
    documents them (all bodies are `{"detail": ...}`)."""
    return {code: {"model": _ERRORS[code][0], "description": _ERRORS[code][1]} for code in codes}
