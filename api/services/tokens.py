"""Create and revoke API tokens (server-side administration)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlmodel import Session

from api.core.config import get_settings
from api.core.db import engine_for
from api.core.security import hash_token, new_token
from api.models import ApiToken, utcnow
from api.services.errors import TokenError


def _session(database_url: str | None) -> Session:
    return Session(engine_for(database_url or get_settings().DATABASE_URL))


def create_token(*, name: str, role: str, database_url: str | None = None) -> str:
    """Store the hash of a new token and return the token itself (shown once)."""
    if role not in ("admin", "reader"):
        raise TokenError(f"role must be admin or reader, not {role!r}")
    token = new_token()
    with _session(database_url) as session:
        session.add(ApiToken(name=name, role=role, token_hash=hash_token(token)))
        try:
            session.commit()
        except IntegrityError:
            raise TokenError(f"a token named {name!r} already exists") from None
        except (OperationalError, ProgrammingError):
            raise TokenError("no schema yet: run `backfill api migrate` first") from None
    return token


def revoke_token(*, name: str, database_url: str | None = None) -> None:
    with _session(database_url) as session:
        try:
            token = session.scalars(select(ApiToken).where(ApiToken.name == name)).first()  # type: ignore[arg-type]
        except (OperationalError, ProgrammingError):
            raise TokenError("no schema yet: run `backfill api migrate` first") from None
        if token is None:
            raise TokenError(f"no token named {name!r}")
        token.revoked_at = token.revoked_at or utcnow()
        session.add(token)
        session.commit()
