"""The tests of a costly session fixture (`ONE_WORKER` in tests/conftest.py) are put in its
xdist group by the fixtures they use, and under `--dist loadgroup` the group reaches the id
xdist schedules by; a collection whose ids xdist would run wrongly is refused (pytest 9.2 gave
schemathesis' per-operation tests one id, and ignored the group xdist writes in it)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import (
    ONE_WORKER,
    PREFECT_SERVER_GROUPS,
    ROOT,
    check_node_ids,
    one_worker_group,
    prefect_server_group,
    xdist_groups,
)

PREFECT_GROUPS = {ONE_WORKER["prefect_server"], *PREFECT_SERVER_GROUPS.values()}


def test_every_test_of_a_one_worker_fixture_is_in_its_group(request: pytest.FixtureRequest) -> None:
    items = request.session.items
    grouped = [item for item in items if one_worker_group(item)]
    for item in grouped:
        fixture = next(f for f in ONE_WORKER if f in item.fixturenames)
        expected = ONE_WORKER[fixture]
        if fixture == "prefect_server":  # the group of its module: its own Prefect server
            expected = prefect_server_group(item.module.__name__)  # type: ignore[attr-defined]
        assert xdist_groups(item) == expected, item.nodeid
    if getattr(request.config.option, "loadgroup", False):  # an xdist worker of a loadgroup run
        assert all(item.nodeid.endswith(f"@{one_worker_group(item)}") for item in grouped)
        assert "@" not in request.node.nodeid  # this test has no group: any worker runs it
        # The Prefect-server groups go out first, one to each worker.
        first = [one_worker_group(item) in PREFECT_GROUPS for item in items]
        assert first == sorted(first, reverse=True)
    # A test using `worker` (or `deployed`) goes with the Prefect server it depends on.
    assert {one_worker_group(item) for item in grouped} <= PREFECT_GROUPS | {"races"}
    worker_tests = [item for item in items if "worker" in item.fixturenames]
    assert all(one_worker_group(item) in PREFECT_GROUPS for item in worker_tests)


def test_the_prefect_server_groups_name_real_modules() -> None:
    """A module renamed would fall back to the first group silently and unbalance the two."""
    assert len(PREFECT_GROUPS) == 2
    for module in PREFECT_SERVER_GROUPS:
        assert (ROOT / "tests" / "deploy" / f"{module}.py").is_file(), module


def test_two_tests_of_one_node_id_are_refused() -> None:
    """xdist's loadgroup queue is keyed by node id: of two tests with one id it runs one."""
    items: list[Any] = [SimpleNamespace(nodeid=f"tests/t.py::test_{n}") for n in "aba"]
    with pytest.raises(pytest.UsageError, match=r"1 node id\(s\) shared .*tests/t.py::test_a"):
        check_node_ids(items, loadgroup=False)
    check_node_ids(items[:2], loadgroup=False)


def test_under_loadgroup_a_grouped_test_whose_id_lacks_its_group_is_refused() -> None:
    """The `@group` suffix is what keeps a group on one worker (pytest 9.2 ignored the id
    xdist writes it into, and both workers started a Prefect server)."""

    def item(nodeid: str, group: str | None) -> Any:
        marks = [pytest.mark.xdist_group(group).mark] if group else []
        return SimpleNamespace(nodeid=nodeid, iter_markers=lambda name: iter(marks))

    grouped = [item("tests/t.py::test_a@races", "races"), item("tests/t.py::test_b", None)]
    check_node_ids(grouped, loadgroup=True)
    lost = [item("tests/t.py::test_a", "races")]
    check_node_ids(lost, loadgroup=False)  # without loadgroup, no suffix is expected
    with pytest.raises(pytest.UsageError, match=r"xdist_group 'races' of tests/t.py::test_a"):
        check_node_ids(lost, loadgroup=True)
