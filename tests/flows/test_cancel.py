"""Stopping a run (what a Cancel does to a deployment's flow-run process: SIGTERM) ends it
within seconds, without a BrokenProcessPool traceback from the chunks in flight, and leaves
it resumable: a rerun applies the rest, each record once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from api.schemas import BackfillKind, MediaIn
from flows.client import BackfillClient
from flows.media_duration import media_duration
from tests.conftest import ROOT, LiveApi
from tests.flows.conftest import write_wav

pytestmark = [pytest.mark.e2e]

FILES = 200


def done(client: BackfillClient) -> int:
    kinds = {k.kind: k for k in client.coverage().kinds}
    return kinds[BackfillKind.MEDIA_DURATION].done


@pytest.mark.timeout(400)
def test_stopped_run_ends_within_seconds_cleanly_and_resumes(
    client_env: LiveApi, media_root: Path, prefect_api_url: str, tmp_path: Path
) -> None:
    uris = [f"tones/{n:03d}.wav" for n in range(FILES)]
    for uri in uris:
        write_wav(media_root / uri, frames=800)
    client = BackfillClient(client_env.url, client_env.admin_token)
    client.register_media([MediaIn(uri=u, media_type="audio") for u in uris])
    env = os.environ | {
        "PREFECT_API_URL": prefect_api_url,
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PYTHONPATH": str(ROOT),
    }
    output = tmp_path / "run.log"
    with output.open("w") as log:
        run = subprocess.Popen(
            [sys.executable, "-m", "tests.flows.stoppable_run"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 240
        while done(client) < 20:
            assert run.poll() is None, output.read_text()
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.2)
        run.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        code = run.wait(timeout=60)
        took = time.monotonic() - stopped
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    text = output.read_text()

    assert code in (143, -signal.SIGTERM), text
    assert took < 10, f"took {took:.1f}s to stop"
    assert "BrokenProcessPool" not in text and "Traceback" not in text, text
    assert "NoneType: None" not in text, text
    first = done(client)
    assert 20 <= first < FILES

    report = media_duration(batch_size=50)  # the rerun continues

    assert report.status == "completed", report.reason
    assert (report.applied, report.unchanged) == (FILES - first, 0)
    assert done(client) == FILES
    client.close()
