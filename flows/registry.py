"""Which flow runs which kind. The CLI looks kinds up here, and imports a flow only to run it.

Adding a kind: write `flows/<kind>.py` (a `Backfill` spec, its params model, and a
`@backfill_flow` whose body calls `flows.engine.run_backfill`), then add its
`module:function` below.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from api.schemas import BackfillKind

if TYPE_CHECKING:
    from prefect import Flow

    from flows.spec import Backfill

FLOWS: dict[BackfillKind, str] = {
    BackfillKind.MEDIA_DURATION: "flows.media_duration:media_duration",
    BackfillKind.FILE_HASHING: "flows.file_hashing:file_hashing",
    BackfillKind.SNR_FREQUENCY: "flows.snr_frequency:snr_frequency",
    BackfillKind.VERSION_0: "flows.version_migration:version_migration",
    BackfillKind.CLIP_COMPILE: "flows.clip_compile:clip_compile",
}


def load_flow(kind: BackfillKind) -> Flow[..., Any]:
    """The flow of `kind`; `KeyError` if no flow is registered for it yet."""
    module, _, name = FLOWS[kind].partition(":")
    flow: Flow[..., Any] = getattr(import_module(module), name)
    return flow


def load_spec(kind: BackfillKind) -> Backfill[Any, Any]:
    """The `Backfill` spec the flow of `kind` runs (its compute version, for a plan)."""
    from flows.spec import Backfill

    module = import_module(FLOWS[kind].partition(":")[0])
    for value in vars(module).values():
        if isinstance(value, Backfill) and value.kind == kind:
            return value
    raise KeyError(f"no Backfill spec of {kind.value} in {module.__name__}")
