"""`backfill media import`: NDJSON of `MediaIn` records, streamed to `POST /media` in batches.

Pure client side: every record goes through the API (`BackfillClient.register_media`), each
batch with an Idempotency-Key derived from its content, so a retried batch is applied once.
A re-import registers nothing twice: known uris come back as `existing`.

Two batches are in flight at once: the next one is parsed and sent while the server writes the
last. A malformed line is reported with its number and skipped; the rest goes on (the import
streams, so a file of millions of lines is never held in memory, and since a re-import is
idempotent, fixing the bad lines and importing again adds just those).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from pydantic import ValidationError

from api.schemas import MAX_BATCH_ITEMS, MediaIn, MediaRegisterResult
from flows.client import BackfillClient

#: Batches sent at once: one being written by the server while the next travels.
IN_FLIGHT = 2


@dataclass
class BadLine:
    """A line that is not a valid `MediaIn`: its number (from 1) and why."""

    line: int
    reason: str


@dataclass
class ImportReport:
    """What an import did: records sent, created, already there, rejected, bad lines."""

    sent: int = 0
    created: int = 0
    existing: int = 0
    rejected: int = 0
    bad_lines: list[BadLine] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)

    def add(self, result: MediaRegisterResult) -> None:
        for item in result.items:
            if item.status == "created":
                self.created += 1
            elif item.status == "existing":
                self.existing += 1
            else:
                self.rejected += 1
                self.rejections.append(f"{item.uri}: {item.reason}")


def _reason(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where + ': ' if where else ''}{first['msg']}{more}"


def parse_lines(lines: Iterable[bytes | str], bad: list[BadLine]) -> Iterator[MediaIn]:
    """Valid records of an NDJSON stream; blank lines are skipped, bad ones go to `bad`."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield MediaIn.model_validate_json(line)
        except ValidationError as exc:
            bad.append(BadLine(number, _reason(exc)))


def _batches(records: Iterator[MediaIn], size: int) -> Iterator[list[MediaIn]]:
    batch: list[MediaIn] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def import_media(
    client: BackfillClient,
    lines: Iterable[bytes | str],
    *,
    batch_size: int = MAX_BATCH_ITEMS,
    in_flight: int = IN_FLIGHT,
    progress: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Register every valid record of `lines` through the API; `progress` after each batch."""
    report = ImportReport()
    pending: deque[Future[MediaRegisterResult]] = deque()

    def settle() -> None:
        report.add(pending.popleft().result())
        if progress is not None:
            progress(report)

    with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="import") as pool:
        try:
            for batch in _batches(parse_lines(lines, report.bad_lines), batch_size):
                if len(pending) >= in_flight:
                    settle()
                pending.append(pool.submit(client.register_media, batch))
                report.sent += len(batch)
            while pending:
                settle()
        finally:
            for future in pending:
                future.cancel()
    return report
