"""Prometheus metrics: request counts and latencies per route (prometheus-fastapi-instrumentator)
and rows per kind and outcome. Each app has its own registry, so tests can build many apps."""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter
from prometheus_fastapi_instrumentator import Instrumentator

from api.schemas import BatchResult


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rows = Counter(
            "backfill_rows",
            "Rows of applied batches by kind and outcome (dry runs and replays excluded).",
            ["kind", "outcome"],
            registry=self.registry,
        )

    def observe(self, kind: str, result: BatchResult) -> None:
        """Count one newly applied batch. A failures batch counts its rows as `failed`."""
        if result.dry_run:
            return
        base, _, failures = kind.partition("/")
        if failures:
            self.rows.labels(base, "failed").inc(result.applied)
        else:
            self.rows.labels(base, "applied").inc(result.applied)
            self.rows.labels(base, "unchanged").inc(result.unchanged)
        self.rows.labels(base, "rejected").inc(len(result.rejected))

    def instrument(self, app: FastAPI) -> None:
        Instrumentator(registry=self.registry, excluded_handlers=["/metrics"]).instrument(
            app
        ).expose(app, include_in_schema=False)
