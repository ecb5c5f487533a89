"""End to end in headless Chromium: the dashboard's pages as a browser renders them.

Debian's ``chromium`` is installed when missing (as root, with apt-get). Screenshots are kept
in test-artifacts/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from celery import Celery
from celery.contrib.testing.worker import TestWorkController

from pgcelery.dashboard import create_dashboard
from pgcelery.settings import Settings
from tests.support.waiting import wait_until

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail("chromium is missing: install Debian's chromium package (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "chromium"], check=True, env=env, capture_output=True
    )
    found = shutil.which("chromium")
    assert found, "apt-get installed chromium but it is not on PATH"
    return found


@pytest.fixture(scope="module")
def chromium() -> str:
    return _chromium()


@pytest.fixture
def served(database_url: str, app: Celery) -> Iterator[str]:
    settings = Settings(
        DATABASE_URL=database_url,
        PGCELERY_METRICS_ENABLED=False,
        PGCELERY_DASHBOARD_REFRESH=1,
        PGCELERY_DASHBOARD_ACTIONS=True,
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        create_dashboard(settings, app), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=30, what="uvicorn to start")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def _browse(chromium: str, url: str, *extra: str) -> str:
    profile = tempfile.mkdtemp(prefix="pgc-chromium-")
    try:
        done = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                "--window-size=1200,800",
                *extra,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _screenshot(chromium: str, url: str, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / name
    target.unlink(missing_ok=True)
    _browse(chromium, url, f"--screenshot={target}", "--virtual-time-budget=3000")
    assert target.exists(), f"chromium wrote no screenshot to {target}"
    assert target.stat().st_size > 10_000, "the screenshot is too small to show the page"
    return target


def test_queues_and_task_pages_in_a_browser(
    chromium: str, served: str, app: Celery, worker: TestWorkController
) -> None:
    for i in range(4):
        assert app.send_task("tests.add", (i, 1)).get(timeout=30) == i + 1
    failed = app.send_task("tests.fail", ("shown in the browser",))
    with pytest.raises(RuntimeError):
        failed.get(timeout=30)
    app.send_task("tests.add", (1, 1), queue="parked")

    dom = _browse(chromium, f"{served}/queues", "--dump-dom", "--virtual-time-budget=5000")
    assert "<h1>Queues</h1>" in dom
    assert 'data-queue="parked"' in dom
    assert "5 results" in dom, "the throughput chart counts the five finished tasks"
    assert "updated " in dom, "the page refreshed its content in place"

    tasks = _browse(chromium, f"{served}/tasks", "--dump-dom")
    assert failed.id in tasks
    assert tasks.count('class="task"') == 5

    detail = _browse(chromium, f"{served}/tasks/{failed.id}", "--dump-dom")
    assert "shown in the browser" in detail
    assert "Traceback" in detail

    wait_until(
        lambda: worker.hostname in _browse(chromium, f"{served}/workers", "--dump-dom"),
        timeout=60,
        interval=1,
        what="the worker on the workers page",
    )
    started = time.monotonic()
    for page, name in (
        ("queues", "queues"),
        ("tasks", "tasks"),
        (f"tasks/{failed.id}", "task"),
        ("workers", "workers"),
        ("failures", "failures"),
    ):
        _screenshot(chromium, f"{served}/{page}", f"dashboard-{name}.png")
    assert time.monotonic() - started < 300
