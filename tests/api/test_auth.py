"""The auth matrix: every route, every kind of caller."""

from __future__ import annotations

import httpx
import pytest

from api.core.config import Settings
from api.main import API_PREFIX, create_app
from tests.conftest import Tokens

ADMIN_ONLY = {
    ("POST", "/media"),
    ("GET", "/backfills/{kind}/pending"),
    ("POST", "/backfills/{kind}/failures"),
    ("POST", "/backfills/media-duration"),
    ("POST", "/backfills/file-hashing"),
    ("POST", "/backfills/snr-frequency"),
    ("POST", "/backfills/version-0"),
    ("POST", "/backfills/clip-compile"),
    ("PUT", "/tiers/{name}"),
    ("POST", "/projects"),
    ("PUT", "/projects/{project_id}/status"),
    ("GET", "/projects/{project_id}/compilation-context"),
    ("POST", "/plans"),
    ("GET", "/plans/{plan_id}/work"),
    ("POST", "/runs"),
    ("POST", "/runs/{flow_run_id}/end"),
    ("POST", "/runs/{flow_run_id}/events"),
}
READER = {
    ("GET", "/backfills/{kind}/failures"),
    ("GET", "/media"),
    ("GET", "/media/{media_id}"),
    ("GET", "/backfills"),
    ("GET", "/projects/{project_id}"),
    ("GET", "/plans/{plan_id}"),
    ("GET", "/plans/{plan_id}/items"),
    ("GET", "/runs"),
    ("GET", "/runs/{flow_run_id}"),
}
PUBLIC = {("GET", "/health")}


def test_matrix_covers_every_route(app_settings: Settings) -> None:
    paths = create_app(app_settings).openapi()["paths"]
    found = {
        (method.upper(), path.removeprefix(API_PREFIX))
        for path, operations in paths.items()
        for method in operations
    }
    assert found == ADMIN_ONLY | READER | PUBLIC


def concrete(path: str) -> str:
    return (
        path.replace("{kind}", "media-duration")
        .replace("{name}", "gold")
        .replace("{project_id}", "1")
        .replace("{media_id}", "1")
        .replace("{plan_id}", "p1")
        .replace("{flow_run_id}", "run-1")
    )


@pytest.mark.parametrize(("method", "path"), sorted(ADMIN_ONLY | READER))
@pytest.mark.parametrize("who", ["none", "unknown", "revoked", "reader", "admin"])
def test_auth_matrix(
    client: httpx.Client, tokens: Tokens, method: str, path: str, who: str
) -> None:
    headers = {
        "none": {"Authorization": ""},
        "unknown": {"Authorization": "Bearer cbk_not-a-real-token"},
        "revoked": tokens.header("revoked"),
        "reader": tokens.header("reader"),
        "admin": tokens.header("admin"),
    }[who]
    r = client.request(method, concrete(path), headers=headers, json={})
    if who in ("none", "unknown", "revoked"):
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
    elif who == "reader" and (method, path) in ADMIN_ONLY:
        assert r.status_code == 403
        assert r.json()["detail"] == "Admin token required"
    else:
        # Past auth: the empty body or missing record gives a 4xx of its own, never 401/403/5xx.
        assert r.status_code not in (401, 403) and r.status_code < 500


def test_token_never_logged(
    client: httpx.Client, tokens: Tokens, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    client.get("/backfills", headers=tokens.header("admin"))
    client.get("/backfills", headers={"Authorization": "Bearer cbk_wrong"})
    assert tokens.admin not in caplog.text and "cbk_wrong" not in caplog.text


#: Routes outside the schema and the /api/v1 prefix; public, as docs/api.md says.
UNLISTED_PUBLIC = {"/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}


def test_public_routes_are_exactly_those_documented(client: httpx.Client) -> None:
    from starlette.routing import Route

    app = client.app  # type: ignore[attr-defined]
    unlisted = {
        r.path for r in app.routes if isinstance(r, Route) and not r.path.startswith(API_PREFIX)
    }
    assert unlisted == UNLISTED_PUBLIC
    for path in sorted(UNLISTED_PUBLIC):
        response = client.get(f"http://testserver{path}", headers={"Authorization": ""})
        assert response.status_code == 200, path
