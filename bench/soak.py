"""``make soak``: 20,000 tasks through the default (Procfile) worker, its RSS sampled throughout.

Run it before a release or after upgrading Celery/kombu/psycopg; it is not part of ``make test``.
It starts the Procfile's worker on a fresh database (``BENCH_DATABASE_URL``, else the local
server on 5432, else an embedded one), sends ``housekeeping.ping`` tasks with results, samples
the worker's resident memory every ``--interval`` seconds while they drain, and prints the
samples and a verdict: growth between the first and the last quarter of the run must stay under
``--max-growth-mb``, or the command exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import psycopg

from bench.environment import drop_database, fresh_database, postgres_server
from pgcelery import create_app, dsn
from pgcelery.schema import migrations
from pgcelery.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SEND_BATCH = 500


@dataclass(frozen=True)
class Sample:
    seconds: float
    done: int
    rss_mb: float


def _procfile_worker() -> list[str]:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("worker:"):
            argv = shlex.split(line.partition(":")[2])
            # The venv's celery, whether or not the venv is on PATH.
            return [sys.executable, "-m", *argv] if argv[0] == "celery" else argv
    raise SystemExit("Procfile has no worker: entry")


def _rss_mb(pid: int) -> float:
    """Resident memory of the worker and its pool children together."""
    parent = psutil.Process(pid)
    total = parent.memory_info().rss
    for child in parent.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):  # a child replaced just now
            total += child.memory_info().rss
    return total / 2**20


def _remaining(conn: psycopg.Connection[object]) -> int:
    row = conn.execute("SELECT count(*) FROM kombu_message").fetchone()
    return int(row[0]) if row else 0


def soak(url: str, tasks: int, interval: float) -> list[Sample]:
    env = {**os.environ, "DATABASE_URL": url, "PGCELERY_METRICS_ENABLED": "false"}
    env["PGCELERY_LOG_LEVEL"] = "WARNING"
    # The worker's log goes to a file: a pipe nobody reads fills up and stalls the worker.
    log_path = tempfile.mkstemp(prefix="pgcelery-soak-", suffix=".log")[1]
    print(f"soak: worker log {log_path}", flush=True)
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            _procfile_worker(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    app = create_app("soak", settings=Settings(DATABASE_URL=url, PGCELERY_METRICS_ENABLED=False))
    samples: list[Sample] = []
    started = time.monotonic()
    try:
        with psycopg.connect(dsn.libpq_url(url), autocommit=True) as conn:
            sent = 0
            while sent < tasks:
                for _ in range(min(SEND_BATCH, tasks - sent)):
                    app.send_task("housekeeping.ping")
                sent += min(SEND_BATCH, tasks - sent)
            next_sample = 0.0
            while True:
                if worker.poll() is not None:
                    raise SystemExit(f"worker exited with {worker.returncode} mid-soak")
                now = time.monotonic() - started
                remaining = _remaining(conn)
                if now >= next_sample or remaining == 0:
                    samples.append(Sample(round(now, 1), tasks - remaining, _rss_mb(worker.pid)))
                    print(
                        f"{now:8.1f}s  {tasks - remaining:7d} done  {samples[-1].rss_mb:8.1f} MB",
                        flush=True,
                    )
                    next_sample = now + interval
                if remaining == 0:
                    return samples
                time.sleep(min(interval, 0.5))
    finally:
        app.close()
        worker.terminate()
        worker.wait(60)


def growth_mb(samples: list[Sample], warmup: int) -> float:
    """Mean RSS of the last quarter of the samples minus that of the first quarter.

    Samples before ``warmup`` tasks are done are left out: they measure the worker importing
    and connecting, not a leak.
    """
    samples = [s for s in samples if s.done >= warmup] or samples[-1:]
    quarter = max(1, len(samples) // 4)
    first = [s.rss_mb for s in samples[:quarter]]
    last = [s.rss_mb for s in samples[-quarter:]]
    return sum(last) / len(last) - sum(first) / len(first)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--tasks", type=int, default=int(os.environ.get("SOAK_TASKS", "20000")))
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--max-growth-mb", type=float, default=64.0)
    parser.add_argument("--json", type=Path, help="also write the samples here")
    args = parser.parse_args(argv)
    with postgres_server() as admin:
        url = fresh_database(admin)
        try:
            migrations.upgrade(url)
            samples = soak(url, args.tasks, args.interval)
        finally:
            drop_database(admin, url)
    growth = growth_mb(samples, warmup=min(1000, args.tasks // 10))
    peak = max(s.rss_mb for s in samples)
    took = samples[-1].seconds
    print(
        f"soak: {args.tasks} tasks in {took:.0f}s; RSS {samples[0].rss_mb:.1f} -> "
        f"{samples[-1].rss_mb:.1f} MB (peak {peak:.1f}); growth after warm-up, first->last quarter "
        f"{growth:+.1f} MB (limit {args.max_growth_mb:.0f})"
    )
    if args.json:
        args.json.write_text(json.dumps([asdict(s) for s in samples], indent=1))
    return 0 if growth <= args.max_growth_mb else 1


if __name__ == "__main__":
    sys.exit(main())
