"""Operator tools: the `backfill` CLI, the demo and the sample corpus (client and server side)."""
