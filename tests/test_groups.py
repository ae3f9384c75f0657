"""The tests of a costly session fixture (`ONE_WORKER` in tests/conftest.py) are put in its
xdist group by the fixtures they use, and under `--dist loadgroup` the group reaches the id
xdist schedules by (pytest >= 9.2 ignored xdist's own way of writing it)."""

from __future__ import annotations

import pytest

from tests.conftest import ONE_WORKER, one_worker_group, xdist_groups


def test_every_test_of_a_one_worker_fixture_is_in_its_group(request: pytest.FixtureRequest) -> None:
    items = request.session.items
    grouped = [item for item in items if one_worker_group(item)]
    for item in grouped:
        fixture = next(f for f in ONE_WORKER if f in item.fixturenames)
        assert xdist_groups(item) == ONE_WORKER[fixture], item.nodeid
    if getattr(request.config.option, "loadgroup", False):  # an xdist worker of a loadgroup run
        assert all(item.nodeid.endswith(f"@{one_worker_group(item)}") for item in grouped)
        assert "@" not in request.node.nodeid  # this test has no group: any worker runs it
    # A test using `worker` (or `deployed`) goes with the Prefect server it depends on.
    assert {one_worker_group(item) for item in grouped} <= {"prefect-server", "races"}
    worker_tests = [item for item in items if "worker" in item.fixturenames]
    assert all(one_worker_group(item) == "prefect-server" for item in worker_tests)
