"""The deployments of `prefect.yaml`, read and checked once, for `serve` and the tests.

`prefect deploy --all` reads `prefect.yaml` for a work pool; `deployments.serve` reads the
same file and builds `flow.to_deployment(...)` for each entry. Every key of a deployment
entry must be one this module maps (the models forbid the rest), so a setting added to
`prefect.yaml` cannot be silently left out of the served deployments.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import yaml  # type: ignore[import-untyped, unused-ignore]
from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

#: The project folder: `prefect.yaml`, `flows/` and `deployments/` live here.
ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "prefect.yaml"


class DefinitionError(Exception):
    """`prefect.yaml` is missing, malformed, or names something that does not exist."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScheduleSpec(_Strict):
    """A cron schedule; the timezone is required, so no schedule depends on the host's."""

    cron: str
    timezone: str
    active: bool = True


class ConcurrencySpec(_Strict):
    """At most `limit` runs of the deployment at once; what happens to one more."""

    limit: int = Field(ge=1)
    collision_strategy: Literal["ENQUEUE", "CANCEL_NEW"]


class WorkPoolSpec(_Strict):
    """Where `prefect deploy` sends runs; `serve` runs them itself and ignores this."""

    name: str
    work_queue_name: str | None = None
    job_variables: dict[str, Any] = Field(default_factory=dict)


class DeploymentSpec(_Strict):
    """One entry of `deployments:` in `prefect.yaml`."""

    name: str
    entrypoint: str = Field(pattern=r"^[\w/]+\.py:\w+$")
    description: str
    tags: tuple[str, ...]
    parameters: dict[str, Any]
    schedules: tuple[ScheduleSpec, ...]
    concurrency_limit: ConcurrencySpec
    work_pool: WorkPoolSpec

    @property
    def flow_file(self) -> Path:
        """The flow's source file, under the project folder."""
        return ROOT / self.entrypoint.partition(":")[0]

    @property
    def module(self) -> str:
        """The flow's module, e.g. `flows.file_hashing`."""
        path = self.entrypoint.partition(":")[0]
        return path.removesuffix(".py").replace("/", ".")

    @property
    def function(self) -> str:
        return self.entrypoint.partition(":")[2]

    def load_flow(self) -> Flow[..., Any]:
        """Import the flow object the entrypoint names."""
        if not self.flow_file.is_file():
            raise DefinitionError(f"{self.entrypoint}: {self.flow_file} does not exist")
        flow = getattr(importlib.import_module(self.module), self.function, None)
        from prefect import Flow

        if not isinstance(flow, Flow):
            raise DefinitionError(f"{self.entrypoint}: {self.function} is not a Prefect flow")
        return flow

    def to_deployment(self) -> RunnerDeployment:
        """The deployment `serve` registers: this entry without its work pool."""
        from prefect.client.schemas.objects import (
            ConcurrencyLimitConfig,
            ConcurrencyLimitStrategy,
        )
        from prefect.schedules import Cron

        limit = self.concurrency_limit
        built = self.load_flow().to_deployment(
            name=self.name,
            description=self.description,
            tags=list(self.tags),
            parameters=dict(self.parameters),
            schedules=[Cron(s.cron, timezone=s.timezone, active=s.active) for s in self.schedules],
            concurrency_limit=ConcurrencyLimitConfig(
                limit=limit.limit,
                collision_strategy=ConcurrencyLimitStrategy(limit.collision_strategy),
            ),
        )
        deployment = cast("RunnerDeployment", built)  # sync call: not a coroutine
        # The same entrypoint as `prefect deploy`, whatever the current folder.
        deployment.entrypoint = self.entrypoint
        return deployment

    def to_shards_deployment(self) -> RunnerDeployment:
        """The twin `serve` registers beside this entry for the shard runs of a run with
        `shards` > 1 (see flows.fanout): no schedule, no concurrency limit. (With a work pool
        the fanned-out run writes this twin itself, from its own deployment.)"""
        from flows.fanout import SHARDS_SUFFIX

        built = self.load_flow().to_deployment(
            name=self.name + SHARDS_SUFFIX,
            description=f"Shard runs of {self.name} (runs with shards > 1 start them).",
            tags=[t for t in self.tags if t != "nightly"] + ["shards"],
            parameters=dict(self.parameters),
        )
        deployment = cast("RunnerDeployment", built)
        deployment.entrypoint = self.entrypoint
        return deployment


class ProjectFile(BaseModel):
    """`prefect.yaml`: only `deployments` matters here (build, pull, definitions... do not)."""

    model_config = ConfigDict(extra="ignore")

    deployments: list[DeploymentSpec]


def load_definitions(path: Path = PREFECT_YAML) -> list[DeploymentSpec]:
    """Every deployment of `prefect.yaml`, anchors resolved, checked."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise DefinitionError(f"cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise DefinitionError(f"{path} is not valid YAML: {exc}") from None
    try:
        return ProjectFile.model_validate(raw).deployments
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise DefinitionError(f"{path}: {where}: {error['msg']}") from None
