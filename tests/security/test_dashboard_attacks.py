"""Attacks on the dashboard from another web site: DNS rebinding, cross-site POSTs, replayed
confirmations, framing, injected notices; and ``pgcelery dashboard`` without its extra.

Crafted requests here; the same checks in a real browser are in
tests/acceptance/test_dashboard_browser.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
from celery import Celery
from starlette.testclient import TestClient

from pgcelery.dashboard import create_dashboard
from pgcelery.settings import Settings
from tests.security.conftest import messages_in

ORIGIN = "http://localhost"


@pytest.fixture
def client(database_url: str, app: Celery) -> Iterator[TestClient]:
    settings = Settings(
        DATABASE_URL=database_url, PGCELERY_METRICS_ENABLED=False, PGCELERY_DASHBOARD_ACTIONS=True
    )
    with TestClient(create_dashboard(settings, app), base_url=ORIGIN) as http:
        yield http


def _token(client: TestClient, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    found = re.search(r'name="token" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8008", "10.0.0.9"])
def test_a_foreign_host_header_is_refused(client: TestClient, host: str) -> None:
    """DNS rebinding: the attacker's page reaches the dashboard under the attacker's name."""
    for path in ("/queues", "/tasks", "/actions/purge/parked"):
        response = client.get(path, headers={"host": host})
        assert response.status_code == 400, path
        assert "Queues" not in response.text


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "http://attacker.example"},
        {"origin": "http://localhost:9999"},
        {"origin": "null"},
        {"referer": "http://attacker.example/page"},
    ],
)
def test_a_cross_site_post_is_refused_even_with_a_valid_token(
    client: TestClient, app: Celery, database_url: str, headers: dict[str, str]
) -> None:
    app.send_task("tests.add", (1, 1), queue="parked")
    token = _token(client, "/actions/purge/parked")
    done = client.post(
        "/actions/purge/parked", data={"token": token}, headers=headers, follow_redirects=False
    )
    assert done.status_code == 403
    assert messages_in(database_url, "parked") == 1


def test_a_confirmation_token_works_once(
    client: TestClient, app: Celery, database_url: str
) -> None:
    app.send_task("tests.add", (1, 1), queue="parked")
    token = _token(client, "/actions/purge/parked")
    same_site = {"origin": ORIGIN}
    first = client.post(
        "/actions/purge/parked", data={"token": token}, headers=same_site, follow_redirects=False
    )
    assert first.status_code == 303
    app.send_task("tests.add", (1, 1), queue="parked")
    again = client.post(
        "/actions/purge/parked", data={"token": token}, headers=same_site, follow_redirects=False
    )
    assert again.status_code == 403
    assert messages_in(database_url, "parked") == 1


@pytest.mark.parametrize("path", ["/queues", "/actions/purge/parked", "/nowhere"])
def test_every_page_refuses_framing_and_sniffing(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.headers["x-frame-options"] == "DENY"
    policy = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy
    assert "default-src 'self'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"


def test_no_page_displays_text_from_its_url(client: TestClient) -> None:
    text = "Your session expired: call +1 555 0100 to unlock it"
    for name in ("notice", "message", "done"):
        page = client.get("/queues", params={name: text})
        assert page.status_code == 200
        assert "call +1 555" not in page.text


def test_the_dashboard_command_without_its_extra_prints_the_hint() -> None:
    """No traceback: the extra's packages are hidden from the command's interpreter."""
    code = (
        "import sys\n"
        "for name in ('starlette', 'uvicorn', 'jinja2'):\n"
        "    sys.modules[name] = None\n"
        "from pgcelery.cli import main\n"
        "sys.exit(main(['dashboard']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DATABASE_URL": "postgresql://localhost/none"},
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "pip install 'pgcelery[dashboard]'" in done.stderr
    assert "Traceback" not in done.stderr
