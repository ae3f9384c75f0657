"""Idempotency keys: a keyed request is done once; a replay gets the stored response."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import TypeVar

from pydantic import BaseModel
from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from api.models import IDEMPOTENCY, IdempotencyRecord
from api.services.errors import IdempotencyConflict

M = TypeVar("M", bound=BaseModel)


def request_fingerprint(scope: str, body: BaseModel) -> str:
    """A stable hash of what was asked: the endpoint and the validated body."""
    payload = scope.encode() + b"\n" + body.model_dump_json().encode()
    return hashlib.sha256(payload).hexdigest()


def claim_key(session: Session, key: str, fingerprint: str, result_type: type[M]) -> M | None:
    """The stored response of a request already made under `key` (the transaction is then
    ended), or None after claiming the key in this transaction for the work to follow.

    The key row is written before the work: a concurrent request with the same key blocks on
    it (PostgreSQL) or on the write lock (SQLite), then finds it and replays. The same key
    with another request is an `IdempotencyConflict`."""
    stored = _stored_response(session, key, fingerprint, result_type)
    if stored is not None:
        session.rollback()
        return stored
    session.add(IdempotencyRecord(key=key, request_hash=fingerprint, response=""))
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        stored = _stored_response(session, key, fingerprint, result_type)
        session.rollback()
        if stored is None:  # pragma: no cover - the other writer rolled back
            raise IdempotencyConflict("Idempotency-Key is in use by another request.") from exc
        return stored
    return None


def remember_response(session: Session, key: str, response: BaseModel) -> None:
    """Store the response of the work done under a claimed key (commit follows)."""
    session.execute(
        update(IdempotencyRecord)
        .where(IdempotencyRecord.key == key)  # type: ignore[arg-type]
        .values(response=response.model_dump_json())
    )


def purge_idempotency_keys(*, session: Session, older_than: datetime) -> int:
    """Forget keys created before `older_than`; returns how many went."""
    result = session.execute(delete(IDEMPOTENCY).where(IDEMPOTENCY.c.created_at < older_than))
    session.commit()
    return int(getattr(result, "rowcount", 0) or 0)


def _stored_response(
    session: Session, key: str, fingerprint: str, result_type: type[M]
) -> M | None:
    record = session.get(IdempotencyRecord, key)
    if record is None:
        return None
    if record.request_hash != fingerprint:
        raise IdempotencyConflict("Idempotency-Key was already used with a different request body.")
    return result_type.model_validate_json(record.response)
