"""media-duration over the real-world corpus (tests/compute/media_corpus.py) through the
real API: only right values are stored, everything else is in the failure ledger with a
reason, and no record holds 0.0 in place of a failure."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from api.schemas import BackfillKind, MediaIn
from flows.client import BackfillClient
from flows.media_duration import media_duration
from tests.compute import media_corpus
from tests.compute.media_corpus import Item
from tests.conftest import LiveApi

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_api_url")]


@pytest.fixture(scope="session")
def built_corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Item]:
    return media_corpus.build(tmp_path_factory.mktemp("e2e-corpus"))


def test_run_stores_only_right_values(
    client_env: LiveApi, media_root: Path, built_corpus: list[Item]
) -> None:
    by_uri: dict[str, Item] = {}
    for item in built_corpus:
        uri = f"{item.media_type}/{item.name}"
        (media_root / uri).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item.path, media_root / uri)
        by_uri[uri] = item
    with BackfillClient(client_env.url, client_env.admin_token) as client:
        client.register_media(
            [
                MediaIn(uri=uri, media_type=item.media_type, size_bytes=item.path.stat().st_size)
                for uri, item in by_uri.items()
            ]
        )

    report = media_duration(batch_size=16, max_failure_ratio=1.0)

    with BackfillClient(client_env.url, client_env.admin_token) as client:
        stored = {r.uri: r.duration for r in client.list_media().items}
        ledger = {f.uri: f.last_error for f in client.failures(BackfillKind.MEDIA_DURATION).items}
    assert report.applied + report.failed == len(by_uri) == len(stored)
    assert report.failed == len(ledger)
    wrong = []
    for uri, item in by_uri.items():
        value, error = stored[uri], ledger.get(uri)
        if error is not None:
            assert value is None, uri  # nothing stored for a failure, never 0.0
            if item.expected is not None and not item.may_fail:
                wrong.append(f"{uri}: failed ({error})")
            elif item.reason not in error or item.name not in error:
                wrong.append(f"{uri}: unclear reason {error!r}")
        elif item.expected is None:
            wrong.append(f"{uri}: stored {value} for a file that must fail")
        elif value is None or abs(value - item.expected) > item.tolerance:
            wrong.append(f"{uri}: stored {value}, expected {item.expected}")
    assert wrong == []
    must_fail = sum(item.expected is None for item in by_uri.values())
    assert must_fail <= report.failed
