"""The `backfill` command."""

from __future__ import annotations

import typer

import api.cli

app = typer.Typer(help="Backfills over a media corpus.", no_args_is_help=True)
app.add_typer(api.cli.app, name="api")

if __name__ == "__main__":
    app()
