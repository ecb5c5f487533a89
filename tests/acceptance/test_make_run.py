"""`make run` as a new user runs it: embedded PostgreSQL, migrations, a worker, Ctrl-C, rerun."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from pgcelery import create_app, dsn
from pgcelery.embedded import EmbeddedPostgres
from pgcelery.settings import Settings
from tests.support.waiting import wait_until
from tests.support.workers import ROOT

PRINTED_URL = re.compile(r"DATABASE_URL='([^']+)'")


class Run:
    """One `make run` in its own session, as in a terminal; output captured to a file."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> str:
        """Wait for the worker to be ready; returns the DATABASE_URL it printed."""
        wait_until(
            lambda: " ready." in self.output() or self.proc.poll() is not None,
            timeout=180,
            interval=0.2,
            what="the worker of `make run` to be ready",
        )
        assert self.proc.poll() is None, self.output()
        found = PRINTED_URL.search(self.output())
        assert found, self.output()
        return found.group(1)

    def ctrl_c(self) -> int:
        """What Ctrl-C in the terminal does: SIGINT to the whole foreground process group."""
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(120)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


@contextmanager
def make_run(env: dict[str, str], log: Path) -> Iterator[Run]:
    run = Run(["make", "--no-print-directory", "run"], env, log)
    try:
        yield run
    finally:
        run.kill()


def user_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TEST_DATABASE_URL")}
    return {**env, "PGCELERY_METRICS_ENABLED": "false", **extra}


def ping(url: str) -> str:
    client = create_app(settings=Settings(DATABASE_URL=url))
    try:
        result = client.send_task("housekeeping.ping", kwargs={"correlation_id": "make-run"})
        assert result.get(timeout=60)["status"] == "ok"
        return str(result.id)
    finally:
        client.close()


def server_pid(datadir: Path) -> int:
    return int((datadir / "postmaster.pid").read_text().splitlines()[0])


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def datadir() -> Iterator[Path]:
    """A data directory outside pytest's tmp_path: a concurrent pytest run resets that tree to
    mode 0700, which locks the unprivileged server user out of it when the tests run as root."""
    root = Path(tempfile.mkdtemp(prefix="pgcelery-run-"))
    yield root / "pgdata"
    EmbeddedPostgres(root / "pgdata").stop()  # after a failure: never leave a server behind
    shutil.rmtree(root, ignore_errors=True)


def test_make_run_uses_an_embedded_database_stops_cleanly_and_reuses_it(
    datadir: Path, tmp_path: Path
) -> None:
    env = user_env(PGCELERY_EMBEDDED_DIR=str(datadir))

    with make_run(env, tmp_path / "first.log") as first:
        url = first.wait_ready()
        assert re.search(r"listening on 127\.0\.0\.1:\d+", first.output())
        assert "schema empty -> " in first.output()
        assert dsn.redact(url) == url  # no password to hide on the embedded server
        task_id = ping(url)
        pid = server_pid(datadir)
        first.ctrl_c()
    assert "stopping embedded PostgreSQL" in first.output(), first.output()
    assert wait_until(lambda: gone(pid), timeout=30, what="the embedded server to exit")
    assert not (datadir / "postmaster.pid").exists()
    assert "Traceback" not in first.output(), first.output()
    assert "] Error" not in first.output(), first.output()  # make: pgcelery exited 0

    with make_run(env, tmp_path / "second.log") as second:
        assert second.wait_ready() == url
        assert "schema already at " in second.output()
        with psycopg.connect(dsn.libpq_url(url)) as conn:
            row = conn.execute(
                "SELECT status FROM celery_taskmeta WHERE task_id = %s", (task_id,)
            ).fetchone()
        assert row == ("SUCCESS",)
        ping(url)
        pid = server_pid(datadir)
        second.ctrl_c()
    assert wait_until(lambda: gone(pid), timeout=30, what="the embedded server to exit")
    assert "Traceback" not in second.output(), second.output()
    assert "] Error" not in second.output(), second.output()


def test_make_run_uses_database_url_when_set(empty_database_url: str, tmp_path: Path) -> None:
    datadir = tmp_path / "unused"
    env = user_env(DATABASE_URL=empty_database_url, PGCELERY_EMBEDDED_DIR=str(datadir))
    with make_run(env, tmp_path / "run.log") as run:
        assert run.wait_ready() == dsn.redact(empty_database_url)
        assert "embedded" not in run.output()
        ping(empty_database_url)
        run.ctrl_c()
    assert not datadir.exists()
