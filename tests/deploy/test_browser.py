"""The Prefect UI, in headless Chromium: a custom run of `file-hashing/nightly` started from
its parameter form (limit and dry_run filled in), executed by the worker, seen complete
through Prefect's API. A screenshot of the filled form is kept in the test's tmp_path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import pytest

from tests.conftest import server_timeout
from tests.deploy.conftest import RUN_TIMEOUT, DeployApi, PrefectServer, Worker, wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Response

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)",
    ),
]


#: Submits of the form before the test gives up on a Prefect server that answers 503.
SUBMITS = 3


def creates_a_run(response: Response) -> bool:
    """The UI's request that creates the flow run (POST .../create_flow_run)."""
    return response.request.method == "POST" and response.url.endswith("/create_flow_run")


def test_custom_run_from_the_ui_form(
    prefect_server: PrefectServer, worker: Worker, deploy_api: DeployApi, tmp_path: Path
) -> None:
    from playwright.sync_api import Locator, Page, expect, sync_playwright

    screenshot = tmp_path / "custom-run-form.png"
    deploy_api.reset()
    deploy_api.register_files("ui", [100, 200, 300, 400, 500])
    with prefect_server.client() as client:
        deployment = client.read_deployment_by_name("file-hashing/nightly")

    def runs_of(deployment_id: UUID) -> set[UUID]:
        from prefect.client.schemas.filters import DeploymentFilter

        with prefect_server.client() as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id={"any_": [deployment_id]}), limit=200
            )
        return {run.id for run in runs}

    def field(page: Page, name: str) -> Locator:
        """One parameter of the schema form, found by its label."""
        label = page.locator(
            ".schema-form-property__label", has_text=re.compile(rf"^{name} \(Optional\)$")
        )
        return page.locator(".schema-form-property", has=label)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            # Playwright's own 30 s (5 s for `expect`) is short for a loaded machine: every
            # wait of the page is on the one deadline of the tests' servers.
            page.set_default_timeout(server_timeout() * 1000)
            expect.set_options(timeout=server_timeout() * 1000)
            page.goto(f"{prefect_server.url}/deployments/deployment/{deployment.id}")
            # The clicks an operator makes: Run, then Custom run.
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_text("Custom run", exact=True).click()
            page.wait_for_url(re.compile(r".*/run\b.*"), wait_until="commit")  # the UI's route
            page.wait_for_load_state("networkidle")  # the form is built from the schema

            limit = field(page, "limit")
            limit.get_by_role("button", name="int", exact=True).click()
            limit.locator("input[type=number]").fill("3")
            expect(limit.locator("input[type=number]")).to_have_value("3")
            dry_run = field(page, "dry_run").get_by_role("switch")
            for _ in range(3):  # a click landing while the form re-renders can be lost
                if dry_run.get_attribute("aria-checked") == "true":
                    break
                dry_run.click()
                page.wait_for_timeout(300)
            expect(dry_run).to_have_attribute("aria-checked", "true")
            for described in ("batch_size", "limit", "dry_run", "mode"):
                assert field(page, described).locator(".schema-form-property__description")

            page.screenshot(path=str(screenshot), full_page=True, animations="disabled")
            before = runs_of(deployment.id)
            for attempt in range(1, SUBMITS + 1):
                with page.expect_response(creates_a_run, timeout=RUN_TIMEOUT * 1000) as answer:
                    page.get_by_role("button", name="Submit", exact=True).click()
                # 503: Prefect's SQLite database was locked by its own loops (under load a
                # write can wait out PREFECT_SERVER_DATABASE_TIMEOUT); nothing was created.
                # The UI says "Something went wrong" and the operator submits again.
                if answer.value.status != 503 or attempt == SUBMITS:
                    break
                assert runs_of(deployment.id) == before
            assert answer.value.ok, f"Submit: {answer.value.status} {answer.value.text()}"
            # The UI goes back to the deployment page; the new run is the one we started.
            try:
                (run_id,) = wait_for("the new flow run", lambda: runs_of(deployment.id) - before)
            except pytest.fail.Exception:
                # What the page says instead (a toast, a field's error), and how it looks.
                page.screenshot(path=str(tmp_path / "after-submit.png"), full_page=True)
                said = page.locator("[role=alert], .p-toast, .p-message").all_inner_texts()
                pytest.fail(f"no flow run after Submit; at {page.url} the page says {said}")
        finally:
            browser.close()

    with prefect_server.client() as client:

        def final_state() -> Any:
            state = client.read_flow_run(run_id).state
            return state if state is not None and state.is_final() else None

        state = wait_for("the custom run", final_state, timeout=RUN_TIMEOUT, every=0.5)
        run = client.read_flow_run(run_id)
    assert state.is_completed(), state
    assert run.deployment_id == deployment.id
    assert run.parameters["limit"] == 3 and run.parameters["dry_run"] is True
    # The form's values reached the flow: a dry run over 3 records, nothing written.
    assert deploy_api.query("SELECT dry_run, applied FROM audit WHERE kind = 'file-hashing'") == [
        (1, 3)
    ]
    assert set(deploy_api.hashes().values()) == {None}
    assert screenshot.stat().st_size > 10_000
