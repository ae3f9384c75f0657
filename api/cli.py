"""`backfill api ...`: serve, migrate, and manage tokens. Server-side: it reads the DB URL.

Heavy imports (sqlalchemy, the app) happen inside the commands, so mounting this app in the
client CLI costs nothing and keeps the client free of database drivers.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

app = typer.Typer(help="The persistence API: serve it, migrate its schema, manage tokens.")
token_app = typer.Typer(help="API tokens: shown once at creation, stored only as a hash.")
app.add_typer(token_app, name="token")


class Role(StrEnum):
    admin = "admin"
    reader = "reader"


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg="red")
    return typer.Exit(2)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes.")] = 1,
    migrate: Annotated[bool, typer.Option(help="Upgrade the schema before serving.")] = True,
) -> None:
    """Run the API under uvicorn."""
    import uvicorn

    from api.core.config import get_settings
    from api.logging import configure_logging

    settings = get_settings()
    if migrate:
        _migrate(settings.DATABASE_URL)
    configure_logging(json_lines=settings.LOG_JSON)
    uvicorn.run(
        "api.main:app",
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
        proxy_headers=False,
    )


def uvicorn_command(port: int, *options: str) -> list[str]:
    """The command that serves the app by uvicorn on 127.0.0.1:`port` in a child process (as
    the demo, the benchmarks and the tests start it); `serve` runs it in-process instead."""
    import sys

    app = [sys.executable, "-m", "uvicorn", "api.main:app"]
    return [*app, "--host", "127.0.0.1", "--port", str(port), *options]


def _migrate(url: str) -> str:
    """Upgrade the schema at `url`; returns what was done, in a few words."""
    from sqlalchemy.exc import SQLAlchemyError

    from api.migrate import upgrade

    try:
        return upgrade(url).describe()
    except SQLAlchemyError as exc:
        reason = getattr(exc, "orig", None) or exc
        raise _fail(f"cannot migrate {_safe(url)}: {reason}") from None


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic) to the latest revision."""
    from api.core.config import get_settings

    url = get_settings().DATABASE_URL
    done = _migrate(url)
    typer.echo(f"{done}: {_safe(url)}")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="A unique name, shown in the audit.")],
    role: Annotated[Role, typer.Option(help="admin may write; reader may only read.")] = Role.admin,
) -> None:
    """Create a token and print it once; only its hash is stored."""
    from api.services.errors import TokenError
    from api.services.tokens import create_token

    try:
        token = create_token(name=name, role=role.value)
    except TokenError as exc:
        raise _fail(str(exc)) from None
    typer.echo(token)


@token_app.command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="The token's name.")]) -> None:
    """Revoke a token: it is refused from now on."""
    from api.services.errors import TokenError
    from api.services.tokens import revoke_token

    try:
        revoke_token(name=name)
    except TokenError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"revoked {name}")
