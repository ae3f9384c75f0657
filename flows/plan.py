"""Plan, then apply, from the flow side: a run with `plan_id` checks the plan is for its
kind and compute version, takes the plan's kind options, and shows it as a table artifact."""

from __future__ import annotations

from typing import Any

from api.schemas import PlanPublic
from flows.client import BackfillClient
from flows.settings import ConfigError
from flows.spec import Backfill, P

#: Plan parameters a run takes from its plan when it leaves them at their default (the shard
#: and limit of a plan are how it was made; the run's own split the plan further).
ADOPTED = ("media_type", "algorithm", "mode")


def load_plan(client: BackfillClient, spec: Backfill[Any, Any], params: P) -> tuple[PlanPublic, P]:
    """The run's plan, and its parameters with the plan's kind options; `ConfigError` when
    the plan is for another kind or compute version, or a parameter contradicts it."""
    assert params.plan_id is not None
    plan = client.get_plan(params.plan_id)
    if plan.kind != spec.kind:
        raise ConfigError(
            f"plan {plan.id} is for {plan.kind.value}, not {spec.kind.value}: "
            f"run it with `backfill run {plan.kind.value} --plan {plan.id}`"
        )
    version = spec.compute_version
    if plan.compute_version != version:
        raise ConfigError(
            f"plan {plan.id} was made for compute version {plan.compute_version} of "
            f"{spec.kind.value}, this flow computes version {version}: make a new plan"
        )
    wanted = plan.parameters.model_dump(exclude_none=True) | {"mode": plan.mode}
    update: dict[str, Any] = {}
    for name in ADOPTED:
        field = type(params).model_fields.get(name)
        if field is None or name not in wanted:
            continue
        value, planned = getattr(params, name), wanted[name]
        if value == planned:
            continue
        if value != field.default:
            raise ConfigError(
                f"plan {plan.id} was made with {name}={planned}, this run has {name}={value}: "
                "leave it out or make a new plan"
            )
        update[name] = planned
    return plan, type(params).model_validate(params.model_dump() | update)


def plan_table(plan: PlanPublic) -> list[dict[str, Any]]:
    """The plan as rows for a table artifact: what it is, its counts, its first records."""
    counts = plan.counts
    rows: list[dict[str, Any]] = [
        {"field": "plan", "value": plan.id},
        {"field": "kind", "value": plan.kind.value},
        {"field": "mode", "value": plan.mode.value},
        {"field": "compute version", "value": plan.compute_version},
        {"field": "parameters", "value": plan.parameters.model_dump_json(exclude_defaults=True)},
        {"field": "made by", "value": f"{plan.token_name} at {plan.created_at:%Y-%m-%d %H:%M:%S}Z"},
        {"field": "records", "value": plan.count},
    ]
    if counts is not None:
        rows += [
            {"field": "still to do", "value": counts.todo},
            {"field": "changed since plan", "value": counts.changed},
            {"field": "done already", "value": counts.done},
        ]
    rows.append(
        {
            "field": "first records (id@revision)",
            "value": ", ".join(f"{i.record_id}@{i.revision}" for i in plan.items),
        }
    )
    return rows
