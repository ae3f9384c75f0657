"""Exception handlers: every error the app answers with, mapped to its status in one place."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import IntegrityError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api.services.errors import DomainError

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")

log = logging.getLogger("api")


def _is_json(content_type: str) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or mime.endswith("+json")


def _message(error: dict[str, Any]) -> str:
    msg = str(error.get("msg"))
    if error.get("type") == "json_invalid" and (ctx := error.get("ctx")):
        # "JSON decode error" alone does not say what is wrong or where.
        msg += f": {str(ctx.get('error'))[:200]} at position {error['loc'][-1]}"
    return msg


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with each issue (its input not echoed), or 415 for a body that is not JSON."""
    # FastAPI leaves a body that is not declared JSON unparsed, then asks for "a valid
    # dictionary"; say what is wrong instead.
    content_type = request.headers.get("content-type")
    issues = [(tuple(e.get("loc", ())), e.get("type")) for e in exc.errors()]
    unparsed = issues == [(("body",), "model_attributes_type")]
    if (content_type is None and unparsed) or (
        content_type is not None
        and not _is_json(content_type)
        and any(loc[:1] == ("body",) for loc, _ in issues)
    ):
        sent = f"not {content_type[:100]!r}" if content_type else "none was sent"
        return JSONResponse(
            {"detail": f"Content-Type must be application/json ({sent})"}, status_code=415
        )
    # FastAPI echoes each bad input back; a 1,001-item batch would come back whole.
    errors = [
        {"loc": e.get("loc"), "msg": _message(e), "type": e.get("type")} for e in exc.errors()
    ]
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """FastAPI's answer, with a complete `Allow` on a 405."""
    if exc.status_code == 405:
        # Starlette's `Allow` names the methods of the first route on the path only (GET and
        # POST /media are two routes); RFC 9110 wants every method the resource supports.
        allowed = [
            method
            for method in _METHODS
            if any(
                route.matches({**request.scope, "method": method})[0] is Match.FULL
                for route in request.app.router.routes
            )
        ]
        exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed)}
    return await http_exception_handler(request, exc)


async def domain_error(_: Request, exc: DomainError) -> JSONResponse:
    """A service's refusal: its status and its message."""
    return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)


async def integrity_error(request: Request, exc: IntegrityError) -> JSONResponse:
    """409: a constraint the services' own checks did not foresee (they answer races with
    ON CONFLICT, locks and per-item rejections); the transaction was rolled back whole."""
    constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)
    what = constraint or str(exc.orig).splitlines()[0][:200]
    log.warning("integrity conflict on %s %s: %s", request.method, request.url.path, what)
    return JSONResponse(
        {
            "detail": f"Conflict with a concurrent or stored change ({what}); "
            "nothing was written, retry the request"
        },
        status_code=409,
    )


async def database_down(_: Request, exc: OperationalError) -> JSONResponse:
    """503 with `Retry-After` while the database is away."""
    log.error("database unavailable: %s", type(exc.orig).__name__)
    return JSONResponse(
        {"detail": "Database unavailable; retry later"},
        status_code=503,
        headers={"Retry-After": "2"},
    )


def register_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(DomainError, domain_error)  # type: ignore[arg-type]
    app.add_exception_handler(IntegrityError, integrity_error)  # type: ignore[arg-type]
    app.add_exception_handler(OperationalError, database_down)  # type: ignore[arg-type]
