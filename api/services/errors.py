"""Domain errors: what a service refuses, named for what the caller should do.

DomainError            (status_code: the HTTP answer `api.exception_handlers` gives)
├── NotFound           404  a referenced row does not exist
├── Conflict           409  the request is valid but the current state forbids it
│   └── IdempotencyConflict  an Idempotency-Key reused with another request
├── InvalidRequest     422  a well-formed request the kind does not take
└── TokenError         400  a token command that cannot be done (CLI only)
"""

from __future__ import annotations

from typing import ClassVar


class DomainError(Exception):
    """A request the services refuse; the message says why, in a short sentence."""

    status_code: ClassVar[int] = 400


class NotFound(DomainError):
    """A referenced row does not exist; the message names it."""

    status_code = 404


class Conflict(DomainError):
    """The request is valid but the current state forbids it."""

    status_code = 409


class IdempotencyConflict(Conflict):
    """The Idempotency-Key was used before with a different request."""


class InvalidRequest(DomainError):
    """A well-formed request that does not apply here (e.g. a filter of another kind)."""

    status_code = 422


class TokenError(DomainError):
    """A token command that cannot be done; the message says why."""


__all__ = [
    "Conflict",
    "DomainError",
    "IdempotencyConflict",
    "InvalidRequest",
    "NotFound",
    "TokenError",
]
