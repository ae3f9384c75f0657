"""Deployments that `prefect.yaml` cannot express: serving them all from one process.

`prefect.yaml` is the single source of every deployment; `deployments.definitions` reads it
and `deployments.serve` serves what it reads (`uv run python -m deployments.serve`).
"""
