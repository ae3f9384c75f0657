"""`backfill sample-corpus DIR`: write the synthetic sample corpus and its manifest.

Registered on the `backfill` app in ops/cli.py::

    from ops.cli_corpus import sample_corpus
    app.command("sample-corpus")(sample_corpus)

numpy, soundfile and moviepy are imported only when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
errors = Console(stderr=True)


def sample_corpus(
    directory: Annotated[
        Path,
        typer.Argument(
            file_okay=False,
            help="Where to write it (created if missing), e.g. a folder in the media root.",
        ),
    ],
    audio: Annotated[int, typer.Option(min=0, max=10_000, help="Tone-in-noise audio files.")] = 12,
    video: Annotated[int, typer.Option(min=0, max=10_000, help="Tiny MP4s with a tone.")] = 3,
    legacy: Annotated[
        int, typer.Option(min=0, max=10_000, help="Files for legacy (version 0) records.")
    ] = 4,
    projects: Annotated[
        int, typer.Option(min=0, max=10_000, help="Clip projects over the videos.")
    ] = 2,
    corrupt: Annotated[
        int, typer.Option(min=0, max=10_000, help="Deliberately unreadable files.")
    ] = 2,
    seed: Annotated[int, typer.Option(min=0, help="Same seed, byte-identical corpus.")] = 0,
) -> None:
    """Write a synthetic corpus (audio, video, legacy, corrupt files) and manifest.json, the
    ground truth of every file (frequency, SNR, duration, sha256, expected errors)."""
    from ops.corpus import MANIFEST_NAME, make_sample_corpus

    try:
        with errors.status(f"writing the sample corpus into {directory} ..."):
            manifest = make_sample_corpus(
                directory,
                audio=audio,
                video=video,
                legacy=legacy,
                projects=projects,
                corrupt=corrupt,
                seed=seed,
            )
    except (OSError, ValueError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        errors.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1 if isinstance(exc, OSError) else 2) from None
    files = manifest.files
    plain = [f for f in files if not f.legacy and not f.corrupt]
    table = Table(title="sample corpus", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("count", justify="right")
    rows = {
        "audio": sum(f.media_type == "audio" for f in plain),
        "video": sum(f.media_type == "video" for f in plain),
        "legacy": sum(f.legacy for f in files),
        "corrupt": sum(f.corrupt for f in files),
        "projects": len(manifest.projects),
        "bytes": sum(f.size_bytes for f in files),
        "seed": seed,
    }
    for name, value in rows.items():
        table.add_row(name, str(value))
    console.print(table)
    where = directory / MANIFEST_NAME
    console.print(f"ground truth: {where}", soft_wrap=True, highlight=False, markup=False)
