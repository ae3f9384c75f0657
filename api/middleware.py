"""Middleware: a request body cap, and one access-log line per request."""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Bodies above this are refused before parsing (1,000 items fit easily).
MAX_BODY_BYTES = 16 * 1024 * 1024
TOO_LARGE = f"Request body larger than {MAX_BODY_BYTES} bytes"

log = logging.getLogger("api")
access = logging.getLogger("api.access")


class BodyLimit:
    """Refuse a body over MAX_BODY_BYTES while it streams in: a chunked request carries no
    Content-Length for `limit_body_and_log` to check. FastAPI passes an HTTPException raised
    while it reads the body on to the handlers, so the client gets a plain 413."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES:
                raise StarletteHTTPException(413, TOO_LARGE)
            return message

        await self.app(scope, limited, send)


async def limit_body_and_log(request: Request, call_next: RequestResponseEndpoint) -> Response:
    """413 for a declared length over the cap; a 500 for what no handler answered; then the
    request's access line."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        return JSONResponse({"detail": TOO_LARGE}, status_code=413)
    started = time.perf_counter()
    try:
        response = await call_next(request)
    except Exception:
        # What no handler turned into an answer: its traceback, then a plain 500 that
        # gets its access line like every other response.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        response = JSONResponse({"detail": "Internal server error"}, status_code=500)
    # One line per request; never headers, so never a token.
    access.info(
        "%s %s %s",
        request.method,
        request.url.path,
        response.status_code,
        extra={
            "path": request.url.path,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "flow_run_id": request.headers.get("x-prefect-flow-run-id"),
        },
    )
    return response


def add_middleware(app: FastAPI) -> None:
    """The last added runs first: the access log wraps the streaming body cap."""
    app.add_middleware(BodyLimit)
    app.add_middleware(BaseHTTPMiddleware, dispatch=limit_body_and_log)
