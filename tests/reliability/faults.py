"""Fault injection: SIGKILL the live API at a chosen moment and start it again on the same
port a few seconds later.

Two triggers: `kill_api_on` hooks this process's HTTP transport and kills the API around
one request (deterministic: e.g. after the server committed a batch, before its answer
reaches the client); `kill_api_when` watches the database from a thread and kills the API
as soon as enough records are applied (whatever the server is doing at that moment).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest

from tests.conftest import LiveApi, server_timeout
from tests.reliability.helpers import Db


@dataclass
class Crash:
    """One SIGKILL of the API and its restart; what the tests check afterwards."""

    api: LiveApi
    down_for: float
    db: Db | None = None
    kind: str | None = None
    killed: bool = False
    #: The Idempotency-Key of the request the API died around (`kill_api_on`).
    key: str | None = None
    #: The status the server answered before it died, the answer the client never saw.
    answer_status: int | None = None
    #: Records of `kind` applied (audit) right after the kill.
    applied_at_kill: int | None = None
    restarted: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def kill(self) -> None:
        """SIGKILL the API now; start it again on the same port `down_for` s later."""
        self.api.stop(kill=True)
        self.killed = True
        if self.db is not None and self.kind is not None:
            self.applied_at_kill = self.db.applied(self.kind)
        threading.Thread(target=self._restart, daemon=True).start()

    def _restart(self) -> None:
        time.sleep(self.down_for)
        try:
            self.api.start()
        except BaseException as exc:  # reported by wait_restarted
            self.errors.append(exc)
        finally:
            self.restarted.set()

    def wait_restarted(self) -> None:
        """Wait for the restart: the down time, then `LiveApi.start`'s own deadline
        (BACKFILL_TEST_SERVER_TIMEOUT) and a little more, so its error is the one seen."""
        assert self.killed, "the API was never killed"
        timeout = self.down_for + server_timeout() + 30
        assert self.restarted.wait(timeout), "the API did not come back"
        assert not self.errors, self.errors


def kill_api_on(
    monkeypatch: pytest.MonkeyPatch,
    api: LiveApi,
    *,
    route: str,
    method: str = "POST",
    nth: int = 1,
    after_answer: bool = True,
    down_for: float = 2.5,
    db: Db | None = None,
    kind: str | None = None,
) -> Crash:
    """SIGKILL `api` around the `nth` request of this process to `method ...route`.

    Requests are counted once per Idempotency-Key (a retry is the same request).
    `after_answer`: the `nth` successful answer: the server handled the request (committed
    it) and dies before the answer reaches the client, which sees the connection drop. The
    worst moment: the client's retry must not apply it twice. Otherwise the API dies just
    before the `nth` request is sent, which is then refused and retried after the restart.
    Requests in flight elsewhere at that moment fail as they would in a real crash.
    """
    crash = Crash(api=api, down_for=down_for, db=db, kind=kind)
    original = httpx.HTTPTransport.handle_request
    seen: list[object] = []

    def is_nth(request: httpx.Request) -> bool:
        """Count requests, a retry (the same Idempotency-Key) only once."""
        key = request.headers.get("Idempotency-Key") or object()
        with crash.lock:
            if key in seen:
                return False
            seen.append(key)
            return len(seen) == nth

    def handle(self: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
        if request.method != method or not request.url.path.endswith(route):
            return original(self, request)
        if not after_answer:
            if is_nth(request):
                crash.key = request.headers.get("Idempotency-Key")
                crash.kill()
            return original(self, request)
        response = original(self, request)
        if not response.is_success or not is_nth(request):
            return response
        response.read()
        response.close()
        crash.key = request.headers.get("Idempotency-Key")
        crash.answer_status = response.status_code
        crash.kill()
        raise httpx.RemoteProtocolError(
            "Server disconnected without sending a response.", request=request
        )

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", handle)
    return crash


def kill_api_when(
    api: LiveApi, db: Db, *, kind: str, applied: int, down_for: float = 2.5, timeout: float = 120
) -> Crash:
    """SIGKILL `api` from a thread once `applied` records of `kind` are in the audit."""
    crash = Crash(api=api, down_for=down_for, db=db, kind=kind)

    def watch() -> None:
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if db.applied(kind) >= applied:
                    crash.kill()
                    return
                time.sleep(0.005)
        except BaseException as exc:  # reported by wait_restarted
            crash.errors.append(exc)
            crash.restarted.set()

    threading.Thread(target=watch, daemon=True).start()
    return crash
