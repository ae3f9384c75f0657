"""`backfill media import`: NDJSON of `MediaIn` records, streamed to `POST /media` in batches.

Pure client side: every record goes through the API, each batch with an Idempotency-Key
derived from its content, so a retried batch is applied once. A re-import registers nothing
twice: known uris come back as `existing`.

The server validates each record (the same `MediaIn` model), so the client does not: it
only parses each line as JSON (orjson) and posts the batch. Four batches are in flight at
once: the next ones are parsed, sent and validated by the server while it writes the last. A
batch the server refuses with 422 is validated here line by line; the malformed lines are
reported with their number and the rest of the batch is sent again. The import streams, so a
file of millions of lines is never held in memory; since a re-import is idempotent, fixing
the bad lines and importing again adds just those.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from api.schemas import MAX_BATCH_ITEMS, BatchResult, MediaIn
from flows.client import BackfillClient, UnprocessableEntityError

#: Batches sent at once: one being written while the server reads and validates the next.
#: Measured (benchmarks.import_rate, 300k records, load 2-5, alternated): 4 instead of 2
#: gave SQLite +44-60 % and PostgreSQL +20-40 % records/s at the same CPU per record.
IN_FLIGHT = 4


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

    def add(self, outcome: Outcome) -> None:
        result, bad = outcome
        self.sent += result.applied + result.unchanged + len(result.rejected)
        self.created += result.applied
        self.existing += result.unchanged
        self.rejected += len(result.rejected)
        self.rejections += [f"record {r.record_id}: {r.reason}" for r in result.rejected]
        self.bad_lines += bad


@dataclass
class Line:
    """One non-blank line: its number, its text and its JSON value."""

    number: int
    text: bytes | str
    value: Any


#: What one batch came to: the API's answer, and the lines it could not take.
Outcome = tuple[BatchResult, list[BadLine]]


def _reason(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where + ': ' if where else ''}{first['msg']}{more}"


def _check(line: Line) -> BadLine | None:
    """None for a valid `MediaIn`, else why not (pydantic's message)."""
    try:
        MediaIn.model_validate_json(line.text)
    except ValidationError as exc:
        return BadLine(line.number, _reason(exc))
    return None


def parse_lines(lines: Iterable[bytes | str], bad: list[BadLine]) -> Iterator[Line]:
    """The JSON lines of an NDJSON stream; blank lines are skipped, unparsable ones go to
    `bad`. A line orjson refuses but the model takes (an integer past 64 bits, which the
    model then bounds) is parsed by the standard library."""
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            line = Line(number, text, None)
            if (problem := _check(line)) is not None:
                bad.append(problem)
                continue
            value = json.loads(text)
        yield Line(number, text, value)


def _batches(records: Iterator[Line], size: int) -> Iterator[list[Line]]:
    batch: list[Line] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _post(client: BackfillClient, batch: list[Line]) -> BatchResult:
    # The counts are all an import reports: building a model per item of the answer cost
    # more than the rest of the client.
    return client.register_media_values([line.value for line in batch])


def send_batch(client: BackfillClient, batch: list[Line]) -> Outcome:
    """Register one batch; on 422, drop the lines that are not a valid `MediaIn` (reported
    by number) and send the rest."""
    try:
        return _post(client, batch), []
    except UnprocessableEntityError:
        bad = [problem for line in batch if (problem := _check(line)) is not None]
        if not bad:
            raise  # not a record's fault: let the caller see the API's answer
    numbers = {b.line for b in bad}
    good = [line for line in batch if line.number not in numbers]
    return (_post(client, good) if good else BatchResult()), bad


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
    pending: deque[Future[Outcome]] = deque()

    def settle() -> None:
        report.add(pending.popleft().result())
        if progress is not None:
            progress(report)

    with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="import") as pool:
        try:
            for batch in _batches(parse_lines(lines, report.bad_lines), batch_size):
                if len(pending) >= in_flight:
                    settle()
                pending.append(pool.submit(send_batch, client, batch))
            while pending:
                settle()
        finally:
            for future in pending:
                future.cancel()
    report.bad_lines.sort(key=lambda b: b.line)
    return report
