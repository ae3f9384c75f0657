"""The typed HTTP client of the backfill API: one class over a long-lived `httpx.Client`.

Errors (every one carries a message an operator can act on, with the server's `detail`)::

    APIError
    ├── APIConnectionError            transport failed; retryable
    │   └── APITimeoutError
    ├── APIResponseValidationError    a 2xx body that is not the expected model
    └── APIStatusError                any non-2xx answer
        ├── BadRequestError           400
        ├── AuthenticationError       401  (missing, unknown or revoked token)
        ├── PermissionDeniedError     403  (a reader token on an admin route)
        ├── NotFoundError             404
        ├── ConflictError             409
        ├── UnprocessableEntityError  422
        ├── RateLimitError            429  retryable, honours Retry-After
        └── InternalServerError       5xx  retryable

Retries live here, in the client, and nowhere else (chunk tasks and flows have
`retries=0`): every call is retried on transport errors, 5xx and 429 until a deadline
(`BACKFILL_API_RETRY_DEADLINE`, default 300 s, counted from the call's first failure), with
exponential backoff capped at `MAX_RETRY_DELAY` and jitter, or after `Retry-After` when the
server sends one. So an API redeploy or a restart of a few minutes is ridden out: the run
waits and goes on. The client logs one WARNING when the API stops answering and one INFO
when it is back (each retry only at DEBUG). Past the deadline the call raises its last error,
saying how long it tried. A chunk whose POST fails is then not recomputed, and page fetches
in the flow body and the CLI get the same policy. A wrong URL still fails at once: a refused
connection is retried only after this client has reached the API once (Prefect's own client
does the same).

Batch POSTs carry an `Idempotency-Key` derived from the batch itself (sha256 of the route,
a run scope and the canonical JSON body), so a retry after the server applied the batch
replays the stored answer instead of writing twice. The scope (the Prefect flow run id and
its attempt, else a random per-client id) keeps a *later* run from replaying an earlier
run's identical batch: the same failure posted by two runs must count as two attempts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from email.utils import parsedate_to_datetime
from functools import cache
from types import TracebackType
from typing import Any, NoReturn, Self, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from api.schemas import (
    MAX_PAGE_LIMIT,
    BackfillKind,
    BatchResult,
    CompilationContext,
    Coverage,
    FailureItem,
    FailurePage,
    Health,
    MediaIn,
    MediaPage,
    MediaPublic,
    MediaRegisterResult,
    MediaType,
    PendingFilter,
    PendingPage,
    PlanCreate,
    PlanPublic,
    PlanWorkPage,
    ProjectCreate,
    ProjectCreated,
    ProjectPublic,
    ProjectStatusUpdate,
    RunEnd,
    RunEventIn,
    RunPage,
    RunPublic,
    RunStart,
)
from flows.settings import ClientSettings

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BackfillClient",
    "BadRequestError",
    "ConflictError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "UnprocessableEntityError",
    "is_retryable",
]

#: Where retries are logged; a flow passes its run logger so they show in the Prefect UI.
Logger = logging.Logger | logging.LoggerAdapter[Any]
logger: Logger = logging.getLogger("flows.client")

API_PREFIX = "/api/v1"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
#: Seconds a call keeps retrying a retryable failure, from its first failure.
DEFAULT_RETRY_DEADLINE = 300.0
INITIAL_RETRY_DELAY = 0.5
#: Longest wait between two attempts: an API that is back is noticed within this.
MAX_RETRY_DELAY = 10.0
#: Longest `Retry-After` we honour; a larger one is capped rather than believed.
MAX_RETRY_AFTER = 60.0
#: The jitter's own generator: retries in a background thread leave the process' `random`
#: alone (a seeded simulation, or hypothesis, which flags a global state changed mid-draw).
_JITTER = random.Random()

M = TypeVar("M", bound=BaseModel)


# --- Errors --------------------------------------------------------------------------------


class APIError(Exception):
    """Base of every error the client raises."""

    def __init__(self, message: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request = request


class APIConnectionError(APIError):
    """The request never got an answer (refused, reset, DNS...)."""


class APITimeoutError(APIConnectionError):
    """No answer within the timeout; the server may still have applied the request."""


class APIResponseValidationError(APIError):
    """A successful answer whose body is not what the contract says."""


class APIStatusError(APIError):
    """The server answered with a non-2xx status; `detail` is its explanation."""

    def __init__(
        self, message: str, *, response: httpx.Response, detail: str, retry_after: float | None
    ) -> None:
        super().__init__(message, request=response.request)
        self.response = response
        self.status_code = response.status_code
        self.detail = detail
        self.retry_after = retry_after


class BadRequestError(APIStatusError):
    pass


class AuthenticationError(APIStatusError):
    pass


class PermissionDeniedError(APIStatusError):
    pass


class NotFoundError(APIStatusError):
    pass


class ConflictError(APIStatusError):
    pass


class UnprocessableEntityError(APIStatusError):
    pass


class RateLimitError(APIStatusError):
    pass


class InternalServerError(APIStatusError):
    pass


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}

_HINTS = {
    401: " (check BACKFILL_API_TOKEN)",
    403: " (this needs an admin token)",
}


def is_retryable(exc: BaseException) -> bool:
    """Transport errors, 5xx and 429 are worth retrying; any other API error is not."""
    return isinstance(exc, APIConnectionError | RateLimitError | InternalServerError)


def _detail(response: httpx.Response) -> str:
    """The server's `detail`: a string, or FastAPI's 422 list condensed to one line."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):
        parts = []
        for entry in detail[:3]:
            if isinstance(entry, dict):
                loc = ".".join(str(p) for p in entry.get("loc", ()) if p != "body")
                parts.append(f"{loc}: {entry.get('msg', '')}" if loc else str(entry.get("msg")))
            else:
                parts.append(str(entry))
        more = f" (+{len(detail) - 3} more)" if len(detail) > 3 else ""
        return "; ".join(parts) + more
    return str(detail)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds)


def make_status_error(response: httpx.Response) -> APIStatusError:
    """The typed error for a non-2xx response."""
    status = response.status_code
    cls = _STATUS_ERRORS.get(status) or (InternalServerError if status >= 500 else APIStatusError)
    detail = _detail(response)
    request = response.request
    message = (
        f"{status} {response.reason_phrase} on {request.method} {request.url.path}: "
        f"{detail}{_HINTS.get(status, '')}"
    )
    return cls(message, response=response, detail=detail, retry_after=_retry_after(response))


def retry_delay(exc: APIError, attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (0-based): Retry-After, else backoff."""
    if isinstance(exc, APIStatusError) and exc.retry_after is not None:
        return min(exc.retry_after, MAX_RETRY_AFTER)
    backoff = min(INITIAL_RETRY_DELAY * 2.0**attempt, MAX_RETRY_DELAY)
    return backoff * (1 - 0.25 * _JITTER.random())  # jitter: parallel chunks spread out


# --- Helpers -------------------------------------------------------------------------------


class BearerAuth(httpx.Auth):
    """Sets `Authorization: Bearer <token>` on every request."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


def canonical_json(body: Any) -> bytes:
    """Stable bytes for a JSON value: sorted keys, no spaces (what the key is derived from)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def idempotency_key(path: str, scope: str, content: bytes) -> str:
    """Deterministic key of one batch: the same route, scope and body give the same key."""
    digest = hashlib.sha256(f"{path}\n{scope}\n".encode() + content).hexdigest()
    return f"bf-{digest}"


def current_flow_run() -> tuple[str | None, int]:
    """The running Prefect flow run's id and attempt number, or (None, 0) outside one."""
    if "prefect" not in sys.modules:  # Prefect was never imported: no flow can be running
        return None, 0
    from prefect.context import FlowRunContext, TaskRunContext

    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        return str(flow_ctx.flow_run.id), flow_ctx.flow_run.run_count
    task_ctx = TaskRunContext.get()
    if task_ctx is not None and task_ctx.task_run.flow_run_id is not None:
        return str(task_ctx.task_run.flow_run_id), 0
    return None, 0


@cache
def tls_context() -> ssl.SSLContext:
    """One verifying TLS context per process, shared by every client: httpx would otherwise
    build a new one (and load the CA bundle into it) for each client, about 40 ms of CPU."""
    return httpx.create_ssl_context()


# --- The client ----------------------------------------------------------------------------


class BackfillClient:
    """Typed access to `/api/v1`; thread-safe, so one instance serves every chunk of a run."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retry_deadline: float = DEFAULT_RETRY_DEADLINE,
        max_retries: int | None = None,
        flow_run_id: str | None = None,
        idempotency_scope: str | None = None,
        transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        logger: Logger = logger,
    ) -> None:
        headers = {"Accept": "application/json", "User-Agent": "corpus-backfills-flows"}
        if flow_run_id:
            headers["X-Prefect-Flow-Run-Id"] = flow_run_id
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(
            transport=transport,
            timeout=timeout,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
            verify=tls_context(),
        )
        self._http.base_url = base_url.rstrip("/") + API_PREFIX
        self._http.auth = BearerAuth(token)
        self._http.headers.update(headers)
        self.flow_run_id = flow_run_id
        self.retry_deadline = retry_deadline
        self.max_retries = max_retries
        self.idempotency_scope = idempotency_scope or uuid.uuid4().hex
        self._sleep = sleep
        self._clock = clock
        self._logger = logger
        self._reached = False
        # When the API stopped answering (None while it answers): one WARNING as it goes,
        # one INFO as it comes back, however many calls and retries wait in between.
        self._outage_since: float | None = None
        #: Outages noted so far: a request sent before the current one began (a concurrent
        #: call's) may still succeed after it began; that says nothing of the API now.
        self._outages = 0
        self._outage_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: ClientSettings, **kwargs: Any) -> BackfillClient:
        """A client for the configured API; inside a flow run it names the run to the API."""
        run_id, run_count = current_flow_run()
        kwargs.setdefault("flow_run_id", run_id)
        kwargs.setdefault("idempotency_scope", f"{run_id}:{run_count}" if run_id else None)
        return cls(
            settings.API_URL,
            settings.api_token(),
            timeout=httpx.Timeout(settings.TIMEOUT, connect=settings.CONNECT_TIMEOUT),
            retry_deadline=settings.API_RETRY_DEADLINE,
            max_retries=settings.MAX_RETRIES,
            **kwargs,
        )

    # --- lifecycle ---

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- transport with the retry policy ---

    def _should_retry(self, error: APIError, *, replay_safe: bool) -> bool:
        if not is_retryable(error):
            return False
        refused = isinstance(error.__cause__, httpx.ConnectError)  # nothing reached the server
        if refused and not self._reached:
            return False  # never reached the API: a wrong URL, so fail at once
        # A POST without an Idempotency-Key may have been applied: resend only if never sent.
        return replay_safe or refused

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        idempotent: bool = False,
    ) -> httpx.Response:
        headers: dict[str, str] = {}
        content: bytes | None = None
        if body is not None:
            content = canonical_json(body)
            headers["Content-Type"] = "application/json"
            if idempotent:
                headers["Idempotency-Key"] = idempotency_key(
                    f"{method} {path}", self.idempotency_scope, content
                )
        query = {k: v for k, v in (params or {}).items() if v is not None}
        attempt = 0
        deadline: float | None = None  # set at the first failure of this call
        while True:
            error: APIError
            outages = self._outages  # before sending: which outage this answer can end
            try:
                response = self._http.request(
                    method, path, params=query, content=content, headers=headers
                )
            except httpx.TimeoutException as exc:
                error = APITimeoutError(
                    f"no answer from {self._http.base_url} to {method} {path} in time "
                    f"({type(exc).__name__})"
                )
                error.__cause__ = exc
            except httpx.TransportError as exc:
                error = APIConnectionError(
                    f"cannot reach the API at {self._http.base_url} ({method} {path}): {exc}"
                )
                error.__cause__ = exc
            else:
                self._reached = True
                if response.is_success:
                    self._outage_over(outages)
                    return response
                error = make_status_error(response)
                if not is_retryable(error):  # it answers, if only to say no
                    self._outage_over(outages)
            if not self._should_retry(error, replay_safe=method != "POST" or idempotent):
                raise error
            now = self._clock()
            if deadline is None:
                deadline = now + self.retry_deadline
            left = deadline - now
            if left <= 0:
                self._give_up(
                    error, f"retrying for {self.retry_deadline:.0f}s (BACKFILL_API_RETRY_DEADLINE)"
                )
            if self.max_retries is not None and attempt >= self.max_retries:
                self._give_up(error, f"{attempt} retries" if attempt else "")
            self._outage_started(error, now)
            delay = min(retry_delay(error, attempt), left)
            attempt += 1
            self._logger.debug("%s; retry %d in %.1fs", error.message, attempt, delay)
            self._sleep(delay)

    def _outage_started(self, error: APIError, now: float) -> None:
        with self._outage_lock:
            if self._outage_since is not None:
                return
            self._outage_since = now
            self._outages += 1
        self._logger.warning(
            "the API does not answer (%s); retrying for up to %.0fs (BACKFILL_API_RETRY_DEADLINE)",
            error.message,
            self.retry_deadline,
        )

    def _outage_over(self, outages: int) -> None:
        """The API answered a request sent when `outages` outages had been noted: the current
        one is over only if the request was sent after it began."""
        if self._outage_since is None:  # the common case, without taking the lock
            return
        with self._outage_lock:
            if outages != self._outages:  # sent before this outage was noted
                return
            since, self._outage_since = self._outage_since, None
        if since is not None:
            self._logger.info(
                "the API at %s answers again after %.0fs",
                self._http.base_url,
                self._clock() - since,
            )

    @staticmethod
    def _give_up(error: APIError, tried: str) -> NoReturn:
        """Raise `error`, saying how long it was retried."""
        if tried:
            error.message = f"{error.message}; gave up after {tried}"
            error.args = (error.message,)
        raise error

    def _call(
        self,
        model: type[M],
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        idempotent: bool = False,
    ) -> M:
        response = self._send(method, path, params=params, body=body, idempotent=idempotent)
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise APIResponseValidationError(
                f"unexpected answer to {method} {path}: not a {model.__name__} "
                f"({exc.error_count()} errors)",
                request=response.request,
            ) from exc

    def _post_batch(self, model: type[M], path: str, items: Sequence[BaseModel], **extra: Any) -> M:
        body = {"items": [item.model_dump(mode="json") for item in items], **extra}
        return self._call(model, "POST", path, body=body, idempotent=True)

    # --- endpoints ---

    def health(self) -> Health:
        return self._call(Health, "GET", "/health")

    def coverage(self) -> Coverage:
        """Each kind: total, done, pending, failed, quarantined."""
        return self._call(Coverage, "GET", "/backfills")

    def pending(
        self,
        kind: BackfillKind,
        *,
        after_id: int = 0,
        limit: int = MAX_PAGE_LIMIT,
        where: PendingFilter | None = None,
    ) -> PendingPage:
        """One page of work after `after_id` (keyset) of the records `where` selects (default:
        the missing ones)."""
        params: dict[str, Any] = {"after_id": after_id, "limit": limit}
        if where is not None:
            params |= where.query()
        return self._call(PendingPage, "GET", f"/backfills/{kind.value}/pending", params=params)

    def post_results(
        self, kind: BackfillKind, items: Sequence[BaseModel], *, dry_run: bool = False
    ) -> BatchResult:
        """Apply computed values (validated models); exactly-once through Idempotency-Key."""
        return self._post_batch(BatchResult, f"/backfills/{kind.value}", items, dry_run=dry_run)

    def post_failures(
        self, kind: BackfillKind, items: Sequence[FailureItem], *, dry_run: bool = False
    ) -> BatchResult:
        """Record per-record failures in the ledger (quarantined after N attempts)."""
        path = f"/backfills/{kind.value}/failures"
        return self._post_batch(BatchResult, path, items, dry_run=dry_run)

    def failures(
        self,
        kind: BackfillKind,
        *,
        after_id: int = 0,
        limit: int = MAX_PAGE_LIMIT,
        quarantined_only: bool = False,
    ) -> FailurePage:
        """One page of the failure ledger: record, attempts, last error."""
        params: dict[str, Any] = {"after_id": after_id, "limit": limit}
        if quarantined_only:
            params["quarantined_only"] = "true"
        return self._call(FailurePage, "GET", f"/backfills/{kind.value}/failures", params=params)

    def register_media(self, items: Sequence[MediaIn]) -> MediaRegisterResult:
        """Register files; a known uri is reported as `existing`, not duplicated."""
        return self._post_batch(MediaRegisterResult, "/media", items, dry_run=False)

    def register_media_values(self, items: Sequence[Mapping[str, Any]]) -> BatchResult:
        """Register records given as JSON objects, sent as they are (the server validates
        each one); the counts only. The bulk import's path: no model per item either way."""
        body = {"items": list(items), "dry_run": False}
        return self._call(BatchResult, "POST", "/media", body=body, idempotent=True)

    def list_media(
        self, *, after_id: int = 0, limit: int = MAX_PAGE_LIMIT, media_type: MediaType | None = None
    ) -> MediaPage:
        params = {"after_id": after_id, "limit": limit, "media_type": media_type}
        return self._call(MediaPage, "GET", "/media", params=params)

    def get_media(self, media_id: int) -> MediaPublic:
        return self._call(MediaPublic, "GET", f"/media/{media_id}")

    def create_project(self, project: ProjectCreate) -> ProjectCreated:
        body = project.model_dump(mode="json", exclude_unset=True)
        return self._call(ProjectCreated, "POST", "/projects", body=body)

    def get_project(self, project_id: int) -> ProjectPublic:
        return self._call(ProjectPublic, "GET", f"/projects/{project_id}")

    def compilation_context(self, project_id: int) -> CompilationContext:
        """Everything one render needs, in one call."""
        return self._call(CompilationContext, "GET", f"/projects/{project_id}/compilation-context")

    def set_project_status(self, project_id: int, update: ProjectStatusUpdate) -> ProjectPublic:
        body = update.model_dump(mode="json", exclude_none=True)
        # Keyed: a claim whose answer was lost must get that answer again, not a 409 from
        # its own first attempt (which would leave the project compiling until its lease).
        path = f"/projects/{project_id}/status"
        return self._call(ProjectPublic, "PUT", path, body=body, idempotent=True)

    # --- plans and the record of every run ---

    def create_plan(self, plan: PlanCreate) -> PlanPublic:
        """Store the records a run would process now (not retried once sent: a lost answer
        leaves a plan nobody uses, never a second one a run would take)."""
        return self._call(PlanPublic, "POST", "/plans", body=plan.model_dump(mode="json"))

    def get_plan(self, plan_id: str) -> PlanPublic:
        return self._call(PlanPublic, "GET", f"/plans/{plan_id}")

    def plan_work(
        self,
        plan_id: str,
        *,
        after_id: int = 0,
        limit: int = MAX_PAGE_LIMIT,
        shard_index: int = 0,
        shard_count: int = 1,
    ) -> PlanWorkPage:
        """One page of a plan as a run takes it: each record todo, changed or done."""
        params: dict[str, Any] = {"after_id": after_id, "limit": limit}
        if shard_count > 1:
            params |= {"shard_index": shard_index, "shard_count": shard_count}
        return self._call(PlanWorkPage, "GET", f"/plans/{plan_id}/work", params=params)

    def start_run(self, run: RunStart) -> RunPublic:
        """Record a flow run's start (idempotent on its flow run id: safe to retry)."""
        body = run.model_dump(mode="json")
        return self._call(RunPublic, "POST", "/runs", body=body, idempotent=True)

    def end_run(self, flow_run_id: str, end: RunEnd) -> RunPublic:
        """Record how a run ended (setting values: safe to retry)."""
        body = end.model_dump(mode="json", exclude_none=True)
        return self._call(RunPublic, "POST", f"/runs/{flow_run_id}/end", body=body, idempotent=True)

    def run_event(self, flow_run_id: str, event: RunEventIn) -> RunPublic:
        """Record a pause, resume, cancel... of a run (not resent once sent: never twice)."""
        body = event.model_dump(mode="json", exclude_none=True)
        return self._call(RunPublic, "POST", f"/runs/{flow_run_id}/events", body=body)

    def runs(
        self, *, before_id: int | None = None, limit: int = 50, kind: BackfillKind | None = None
    ) -> RunPage:
        """Runs newest first."""
        params = {"before_id": before_id, "limit": limit, "kind": kind.value if kind else None}
        return self._call(RunPage, "GET", "/runs", params=params)
