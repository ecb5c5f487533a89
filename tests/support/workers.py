"""Real Celery workers for the tests: in-process, and subprocesses run like the Procfile's."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def procfile_worker_command() -> list[str]:
    """The ``worker:`` line of the Procfile, split into argv."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("worker:"):
            return shlex.split(line.partition(":")[2])
    raise AssertionError("Procfile has no worker: entry")


class WorkerProcess:
    """A worker subprocess whose combined output is captured to a file."""

    def __init__(self, argv: Sequence[str], env: dict[str, str]) -> None:
        self.argv = list(argv)
        self.log_path = Path(tempfile.mkstemp(prefix="pgcelery-worker-", suffix=".log")[1])
        self._log = self.log_path.open("wb")
        bin_dir = str(Path(sys.executable).parent)
        full_env = {**os.environ, **env, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
        full_env["PYTHONPATH"] = f"{ROOT}:{ROOT / 'backend'}"
        self.proc = subprocess.Popen(
            self.argv, env=full_env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


@contextmanager
def worker_process(
    database_url: str,
    argv: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[WorkerProcess]:
    """Run a worker subprocess (default: the Procfile's command) against ``database_url``."""
    command = list(argv) if argv is not None else procfile_worker_command()
    extra = {"DATABASE_URL": database_url, "PGCELERY_METRICS_ENABLED": "false", **(env or {})}
    worker = WorkerProcess(command, extra)
    try:
        yield worker
    finally:
        worker.stop()


def free_port() -> int:
    """A TCP port nothing listens on right now, for a worker's metrics server."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, str]:
    """``GET http://127.0.0.1:<port><path>``: (status, body); (0, error) when nothing answers."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def metrics_worker_env(port: int, **extra: str) -> dict[str, str]:
    """Environment for a worker subprocess that serves /metrics and /health on ``port``."""
    return {
        "PGCELERY_METRICS_ENABLED": "true",
        "PGCELERY_METRICS_HOST": "127.0.0.1",
        "PGCELERY_METRICS_PORT": str(port),
        **extra,
    }


@contextmanager
def solo_worker(app: Any) -> Iterator[Any]:
    """An in-process solo worker (``celery.contrib.testing``) consuming ``app``'s queues."""
    from celery.contrib.testing.worker import start_worker

    with start_worker(
        app, pool="solo", concurrency=1, perform_ping_check=False, shutdown_timeout=30
    ) as controller:
        yield controller
