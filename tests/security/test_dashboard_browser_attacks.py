"""The dashboard attacks in headless Chromium: a DNS-rebinding page, and another site's page
that POSTs a (stolen) confirmation token with the user's browser."""

from __future__ import annotations

import functools
import socket
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import uvicorn
from celery import Celery

from pgcelery.dashboard import create_dashboard
from pgcelery.settings import Settings
from tests.acceptance import test_dashboard_browser as browser
from tests.security.conftest import messages_in
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def chromium() -> str:
    return browser._chromium()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def dashboard(database_url: str, app: Celery) -> Iterator[str]:
    settings = Settings(
        DATABASE_URL=database_url, PGCELERY_METRICS_ENABLED=False, PGCELERY_DASHBOARD_ACTIONS=True
    )
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_dashboard(settings, app), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=30, what="uvicorn to start")
    yield f"127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def attacker_site() -> Iterator[tuple[Path, str]]:
    """(directory, origin) of another web site, served on another port."""
    directory = Path(tempfile.mkdtemp(prefix="pgc-attacker-"))
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield directory, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_dns_rebinding_page_cannot_read_the_dashboard(
    chromium: str, dashboard: str, app: Celery
) -> None:
    secret = "argument-only-the-owner-may-read"
    app.send_task("tests.add", (secret, 1), queue="parked")
    port = dashboard.rsplit(":", 1)[1]
    dom = browser._browse(
        chromium,
        f"http://rebound.test:{port}/tasks?state=PENDING",
        "--host-resolver-rules=MAP rebound.test 127.0.0.1",
        "--dump-dom",
    )
    assert "unknown host" in dom
    assert secret not in dom


def test_another_sites_form_cannot_purge_a_queue(
    chromium: str,
    dashboard: str,
    app: Celery,
    database_url: str,
    attacker_site: tuple[Path, str],
) -> None:
    app.send_task("tests.add", (1, 1), queue="parked")
    with urllib.request.urlopen(f"http://{dashboard}/actions/purge/parked", timeout=30) as page:
        html = page.read().decode()
    token = html.split('name="token" value="', 1)[1].split('"', 1)[0]
    directory, origin = attacker_site
    (directory / "index.html").write_text(
        f'<form method="post" action="http://{dashboard}/actions/purge/parked">'
        f'<input name="token" value="{token}"></form>'
        "<script>document.forms[0].submit()</script>"
    )
    dom = browser._browse(
        chromium, f"{origin}/index.html", "--dump-dom", "--virtual-time-budget=5000"
    )
    assert "cross-site request refused" in dom
    assert messages_in(database_url, "parked") == 1
