"""The API client against a respx router: headers, the error tree, and the one retry policy."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import respx

from api.schemas import (
    BackfillKind,
    DurationResult,
    FailureItem,
    HashAlgorithm,
    HashResult,
    PendingFilter,
    ProjectCreate,
    ReprocessMode,
)
from flows.client import (
    MAX_RETRY_DELAY,
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    AuthenticationError,
    BackfillClient,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
    is_retryable,
)

BASE = "http://api.test"
PAGE: dict[str, object] = {"kind": "media-duration", "items": [], "next_after_id": None}
RESULT = {"applied": 2, "unchanged": 0, "rejected": [], "dry_run": False}
HEALTH = {"status": "ok", "database": True, "version": "0.1.0"}


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(base_url=f"{BASE}/api/v1", assert_all_called=False)


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make_client(router: respx.Router, sleeps: Sleeps, **kwargs: object) -> BackfillClient:
    return BackfillClient(
        BASE,
        "tok-123",
        transport=httpx.MockTransport(router.handler),
        sleep=sleeps,
        **kwargs,  # type: ignore[arg-type]
    )


def reach(client: BackfillClient, router: respx.Router) -> None:
    """One successful call, so the client knows the URL is right."""
    router.get("/health").respond(json=HEALTH)
    assert client.health().status == "ok"


DURATIONS = [
    DurationResult(record_id=1, duration=1.5),
    DurationResult(record_id=2, duration=2.0),
]


def test_sends_bearer_token_and_flow_run_id(router: respx.Router, sleeps: Sleeps) -> None:
    route = router.get("/backfills/media-duration/pending").respond(json=PAGE)
    client = make_client(router, sleeps, flow_run_id="run-42")

    page = client.pending(BackfillKind.MEDIA_DURATION, after_id=7, limit=50)

    assert page.items == [] and page.next_after_id is None
    request = route.calls.last.request
    assert request.headers["Authorization"] == "Bearer tok-123"
    assert request.headers["X-Prefect-Flow-Run-Id"] == "run-42"
    assert dict(request.url.params) == {"after_id": "7", "limit": "50"}


def test_pending_sends_filters_shards_and_kind_options(
    router: respx.Router, sleeps: Sleeps
) -> None:
    route = router.get("/backfills/file-hashing/pending").respond(
        json=PAGE | {"kind": "file-hashing"}
    )
    client = make_client(router, sleeps)

    where = PendingFilter(
        mode=ReprocessMode.STALE,
        compute_version=2,
        media_type="audio",
        algorithm=HashAlgorithm.MD5,
        shard_index=1,
        shard_count=3,
    )
    client.pending(BackfillKind.FILE_HASHING, where=where)

    assert dict(route.calls.last.request.url.params) == {
        "after_id": "0",
        "limit": "1000",
        "mode": "stale",
        "compute_version": "2",
        "media_type": "audio",
        "algorithm": "md5",
        "shard_index": "1",
        "shard_count": "3",
    }
    client.pending(BackfillKind.FILE_HASHING)  # the defaults are not sent
    assert dict(route.calls.last.request.url.params) == {"after_id": "0", "limit": "1000"}
    assert "X-Prefect-Flow-Run-Id" not in route.calls.last.request.headers


def test_retries_connect_errors_once_the_api_was_reached(
    router: respx.Router, sleeps: Sleeps
) -> None:
    client = make_client(router, sleeps)
    reach(client, router)
    route = router.get("/backfills/media-duration/pending").mock(
        side_effect=[
            httpx.ConnectError("refused"),
            httpx.ConnectError("refused"),
            httpx.Response(200, json=PAGE),
        ]
    )

    client.pending(BackfillKind.MEDIA_DURATION)

    assert route.call_count == 3
    assert len(sleeps) == 2 and 0.375 <= sleeps[0] <= 0.5 and 0.75 <= sleeps[1] <= 1.0


def test_wrong_url_fails_at_once(router: respx.Router, sleeps: Sleeps) -> None:
    route = router.get("/backfills").mock(side_effect=httpx.ConnectError("refused"))
    client = make_client(router, sleeps)

    with pytest.raises(APIConnectionError, match="cannot reach the API at http://api.test"):
        client.coverage()

    assert route.call_count == 1 and sleeps == []


@pytest.mark.parametrize("statuses", [[502], [503], [502, 503]])
def test_retries_bad_gateway_and_unavailable(
    router: respx.Router, sleeps: Sleeps, statuses: list[int]
) -> None:
    route = router.post("/backfills/media-duration").mock(
        side_effect=[httpx.Response(s, text="upstream down") for s in statuses]
        + [httpx.Response(200, json=RESULT)]
    )
    client = make_client(router, sleeps)

    result = client.post_results(BackfillKind.MEDIA_DURATION, DURATIONS)

    assert result.applied == 2
    assert route.call_count == len(statuses) + 1
    keys = {call.request.headers["Idempotency-Key"] for call in route.calls}
    assert len(keys) == 1  # every resend is the same batch


def test_rate_limit_honours_retry_after(router: respx.Router, sleeps: Sleeps) -> None:
    route = router.post("/backfills/media-duration").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "3"}, json={"detail": "Slow down"}),
            httpx.Response(200, json=RESULT),
        ]
    )
    client = make_client(router, sleeps)

    client.post_results(BackfillKind.MEDIA_DURATION, DURATIONS)

    assert route.call_count == 2 and sleeps == [3.0]


def test_retry_after_as_http_date(router: respx.Router, sleeps: Sleeps) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
    router.get("/backfills").mock(
        side_effect=[
            httpx.Response(503, headers={"Retry-After": when}),
            httpx.Response(200, json={"kinds": []}),
        ]
    )
    client = make_client(router, sleeps)

    client.coverage()

    assert len(sleeps) == 1 and 17 <= sleeps[0] <= 20


def test_gives_up_after_max_retries(router: respx.Router, sleeps: Sleeps) -> None:
    route = router.get("/backfills").respond(500, json={"detail": "boom"})
    client = make_client(router, sleeps, max_retries=2)

    with pytest.raises(
        InternalServerError, match="500 Internal Server Error on GET /api/v1/backfills: boom"
    ):
        client.coverage()

    assert route.call_count == 3 and len(sleeps) == 2


class Clock:
    """A monotonic clock that only moves when the client sleeps: no real waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def deadline_client(
    router: respx.Router, clock: Clock, logger: logging.Logger, deadline: float = 300.0
) -> BackfillClient:
    client = BackfillClient(
        BASE,
        "tok-123",
        transport=httpx.MockTransport(router.handler),
        retry_deadline=deadline,
        sleep=clock.sleep,
        clock=clock,
        logger=logger,
    )
    reach(client, router)
    return client


def test_outage_shorter_than_the_deadline_is_ridden_out_with_one_line_each_way(
    router: respx.Router, caplog: pytest.LogCaptureFixture
) -> None:
    """The API is away for ~200 s: backoff doubles to its cap, with jitter, and the call
    succeeds once it is back; one WARNING as it goes, one INFO as it returns."""
    clock = Clock()
    log = logging.getLogger("test.client.outage")
    client = deadline_client(router, clock, log)
    back_at = clock.now + 200

    def api(request: httpx.Request) -> httpx.Response:
        if clock.now < back_at:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, json=RESULT)

    route = router.post("/backfills/media-duration").mock(side_effect=api)
    process_random = random.getstate()
    with caplog.at_level(logging.DEBUG, logger=log.name):
        result = client.post_results(BackfillKind.MEDIA_DURATION, DURATIONS)

    assert result.applied == 2
    assert random.getstate() == process_random  # the jitter has a generator of its own
    assert 200 <= clock.now - (back_at - 200) <= 200 + MAX_RETRY_DELAY
    waits = clock.sleeps
    assert 0.375 <= waits[0] <= 0.5  # starts small...
    assert max(waits) <= MAX_RETRY_DELAY  # ...never waits longer than the cap...
    assert sum(w >= 0.75 * MAX_RETRY_DELAY for w in waits) >= 15  # ...and reaches it
    assert len(set(waits)) > len(waits) // 2  # jitter: not one fixed interval
    assert route.call_count == len(waits) + 1
    assert len({c.request.headers["Idempotency-Key"] for c in route.calls}) == 1
    above_debug = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno > 10]
    assert len(above_debug) == 2, above_debug
    (warn, down), (info, up) = above_debug
    assert warn == "WARNING" and "does not answer" in down and "connection refused" in down
    assert "300s (BACKFILL_API_RETRY_DEADLINE)" in down
    assert info == "INFO" and "answers again after" in up


def test_a_call_sent_before_the_outage_began_does_not_end_it(
    router: respx.Router, caplog: pytest.LogCaptureFixture
) -> None:
    """Concurrent calls (a flow's task threads): a read sent before the API went answers
    after another call has met the outage. That answer says nothing of the API now: the
    outage goes on (no INFO, and no second WARNING at the next failure) until a call sent
    during it is answered."""
    clock = Clock()
    log = logging.getLogger("test.client.concurrent-outage")
    read_sent, outage_noted, read_answered = threading.Event(), threading.Event(), threading.Event()

    def sleep(seconds: float) -> None:  # the failed write waits for its retry
        outage_noted.set()
        assert read_answered.wait(10)
        clock.sleep(seconds)

    client = BackfillClient(
        BASE,
        "tok-123",
        transport=httpx.MockTransport(router.handler),
        retry_deadline=300.0,
        sleep=sleep,
        clock=clock,
        logger=log,
    )
    reach(client, router)

    def slow_read(request: httpx.Request) -> httpx.Response:
        read_sent.set()
        assert outage_noted.wait(10)
        return httpx.Response(200, json={"kinds": []})

    router.get("/backfills").mock(side_effect=slow_read)
    writes = router.post("/backfills/media-duration").mock(
        side_effect=[
            httpx.ConnectError("connection refused"),
            httpx.ConnectError("connection refused"),  # still down after the read's answer
            httpx.Response(200, json=RESULT),
        ]
    )
    with caplog.at_level(logging.INFO, logger=log.name), ThreadPoolExecutor(2) as pool:
        read = pool.submit(client.coverage)
        assert read_sent.wait(10)
        write = pool.submit(client.post_results, BackfillKind.MEDIA_DURATION, DURATIONS)
        read.result(timeout=10)
        read_answered.set()
        assert write.result(timeout=10).applied == 2

    assert writes.call_count == 3
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in said] == ["WARNING", "INFO"], said
    assert "does not answer" in said[0][1] and "answers again after" in said[1][1]


def test_past_the_deadline_the_call_fails_naming_the_setting(
    router: respx.Router, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    log = logging.getLogger("test.client.deadline")
    client = deadline_client(router, clock, log, deadline=60.0)
    started = clock.now
    router.get("/backfills").respond(503, text="restarting")

    with (
        caplog.at_level(logging.INFO, logger=log.name),
        pytest.raises(InternalServerError) as failed,
    ):
        client.coverage()

    assert clock.now - started == pytest.approx(60.0)  # the last wait ends at the deadline
    assert "503 Service Unavailable" in str(failed.value)
    assert "gave up after retrying for 60s (BACKFILL_API_RETRY_DEADLINE)" in str(failed.value)
    assert [r.levelname for r in caplog.records] == ["WARNING"]  # once, not per retry


def test_retry_after_is_clipped_to_the_deadline(router: respx.Router) -> None:
    clock = Clock()
    client = deadline_client(router, clock, logging.getLogger("test.client.clip"), deadline=20)
    router.get("/backfills").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "45"}),
            httpx.Response(429, headers={"Retry-After": "45"}),
        ]
    )

    with pytest.raises(RateLimitError):
        client.coverage()

    assert clock.sleeps == [20.0]


def test_concurrent_calls_in_one_outage_log_it_once(
    router: respx.Router, caplog: pytest.LogCaptureFixture
) -> None:
    """Several chunks wait on the same outage: still one WARNING and one INFO."""
    log = logging.getLogger("test.client.concurrent")
    client = BackfillClient(
        BASE,
        "tok-123",
        transport=httpx.MockTransport(router.handler),
        logger=log,
        sleep=lambda s: time.sleep(0.001),
    )
    reach(client, router)
    failures = iter([httpx.ConnectError("refused")] * 12)
    lock = threading.Lock()

    def api(request: httpx.Request) -> httpx.Response:
        with lock:
            error = next(failures, None)
        if error is not None:
            raise error
        return httpx.Response(200, json={"kinds": []})

    router.get("/backfills").mock(side_effect=api)
    with caplog.at_level(logging.INFO, logger=log.name), ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: client.coverage(), range(4)))

    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]


def test_unauthorized_is_not_retried_and_says_why(router: respx.Router, sleeps: Sleeps) -> None:
    route = router.get("/backfills").respond(
        401, json={"detail": "Invalid or revoked token"}, headers={"WWW-Authenticate": "Bearer"}
    )
    client = make_client(router, sleeps)

    with pytest.raises(AuthenticationError) as caught:
        client.coverage()

    assert route.call_count == 1 and sleeps == []
    assert caught.value.status_code == 401
    assert caught.value.detail == "Invalid or revoked token"
    assert str(caught.value) == (
        "401 Unauthorized on GET /api/v1/backfills: Invalid or revoked token "
        "(check BACKFILL_API_TOKEN)"
    )


def test_unprocessable_is_not_retried_and_lists_fields(
    router: respx.Router, sleeps: Sleeps
) -> None:
    detail = [
        {"type": "value_error", "loc": ["body", "items", 0, "hash"], "msg": "bad digest"},
        {"type": "missing", "loc": ["body", "items", 1, "algorithm"], "msg": "Field required"},
    ]
    route = router.post("/backfills/file-hashing").respond(422, json={"detail": detail})
    client = make_client(router, sleeps)
    item = HashResult(record_id=1, hash="a" * 64, algorithm=HashAlgorithm.SHA256)

    with pytest.raises(UnprocessableEntityError) as caught:
        client.post_results(BackfillKind.FILE_HASHING, [item])

    assert route.call_count == 1 and sleeps == []
    assert caught.value.detail == "items.0.hash: bad digest; items.1.algorithm: Field required"


@pytest.mark.parametrize(
    ("status", "error"),
    [(403, PermissionDeniedError), (404, NotFoundError), (409, ConflictError)],
)
def test_other_client_errors_are_typed_and_final(
    router: respx.Router, sleeps: Sleeps, status: int, error: type[Exception]
) -> None:
    route = router.get("/media/9").respond(status, json={"detail": "Nope"})
    client = make_client(router, sleeps)

    with pytest.raises(error, match="Nope"):
        client.get_media(9)

    assert route.call_count == 1 and sleeps == []


def test_timeout_after_the_server_applied_is_replayed_with_the_same_key(
    router: respx.Router, sleeps: Sleeps
) -> None:
    # The first POST reaches the server, which applies it, but the answer never arrives.
    route = router.post("/backfills/media-duration").mock(
        side_effect=[httpx.ReadTimeout("no answer"), httpx.Response(200, json=RESULT)]
    )
    client = make_client(router, sleeps, flow_run_id="run-1", idempotency_scope="run-1:1")

    result = client.post_results(BackfillKind.MEDIA_DURATION, DURATIONS)

    assert result.applied == 2 and route.call_count == 2
    first, second = (call.request for call in route.calls)
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert first.headers["Idempotency-Key"].startswith("bf-")
    assert first.content == second.content
    assert json.loads(first.content) == {
        "items": [
            {"record_id": 1, "compute_version": 1, "duration": 1.5},
            {"record_id": 2, "compute_version": 1, "duration": 2.0},
        ],
        "dry_run": False,
    }


def test_timeout_surfaces_as_api_timeout_error(router: respx.Router, sleeps: Sleeps) -> None:
    router.get("/backfills").mock(side_effect=httpx.ReadTimeout("slow"))
    client = make_client(router, sleeps, max_retries=1)

    with pytest.raises(APITimeoutError, match="no answer from http://api.test/api/v1/"):
        client.coverage()

    assert len(sleeps) == 1


def test_idempotency_key_is_deterministic_per_batch_and_scope(
    router: respx.Router, sleeps: Sleeps
) -> None:
    route = router.post("/backfills/media-duration/failures").respond(json=RESULT)
    failures = [FailureItem(record_id=3, error="corrupt")]

    def key(scope: str, items: list[FailureItem]) -> str:
        client = make_client(router, sleeps, idempotency_scope=scope)
        client.post_failures(BackfillKind.MEDIA_DURATION, items)
        return str(route.calls.last.request.headers["Idempotency-Key"])

    assert key("run-a:1", failures) == key("run-a:1", failures)
    # A later run posting the same failure must count as a new attempt, not a replay.
    assert key("run-a:1", failures) != key("run-b:1", failures)
    assert key("run-a:1", failures) != key("run-a:1", [FailureItem(record_id=3, error="gone")])


def test_post_without_idempotency_is_not_resent_after_a_timeout(
    router: respx.Router, sleeps: Sleeps
) -> None:
    client = make_client(router, sleeps)
    reach(client, router)
    route = router.post("/projects").mock(side_effect=httpx.ReadTimeout("no answer"))

    with pytest.raises(APITimeoutError):
        client.create_project(ProjectCreate(name="p", owner="o"))

    assert route.call_count == 1 and sleeps == []


def test_unexpected_body_is_a_response_validation_error(
    router: respx.Router, sleeps: Sleeps
) -> None:
    router.get("/backfills").respond(json={"kinds": "all of them"})
    client = make_client(router, sleeps)

    with pytest.raises(APIResponseValidationError, match="not a Coverage"):
        client.coverage()


def test_is_retryable_covers_transport_5xx_and_429_only() -> None:
    request = httpx.Request("GET", f"{BASE}/api/v1/backfills")

    def status_error(status: int) -> Exception:
        from flows.client import make_status_error

        return make_status_error(httpx.Response(status, request=request, json={"detail": "x"}))

    assert is_retryable(APIConnectionError("down"))
    assert is_retryable(APITimeoutError("slow"))
    assert all(is_retryable(status_error(s)) for s in (429, 500, 502, 503, 504))
    assert not any(is_retryable(status_error(s)) for s in (400, 401, 403, 404, 409, 413, 422))
    assert isinstance(status_error(429), RateLimitError)
    assert not is_retryable(ValueError("not an API error"))
