"""``pgcelery worker``: run the Procfile worker, on embedded PostgreSQL if DATABASE_URL is unset."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from pgcelery import dsn
from pgcelery.schema import migrations

#: The worker command of the Procfile, CI and the subprocess test fixture.
WORKER_COMMAND = ("celery", "-A", "pgcelery.celery_app", "worker", "-P", "solo", "-c", "1")
EMBEDDED_DATABASE = "pgcelery"


def cmd_worker(args: argparse.Namespace) -> int:
    """Run the Procfile worker; without DATABASE_URL, on a private embedded PostgreSQL."""
    env = dict(os.environ)
    server = None
    try:
        if not env.get("DATABASE_URL"):
            from pgcelery.embedded import EmbeddedPostgres

            datadir = Path(env.get("PGCELERY_EMBEDDED_DIR") or ".pgcelery/pgdata")
            server = EmbeddedPostgres(datadir)
            print(f"pgcelery: starting embedded PostgreSQL in {server.datadir} ...", flush=True)
            server.start()
            env["DATABASE_URL"] = server.create_database(EMBEDDED_DATABASE)
            print(
                f"pgcelery: embedded PostgreSQL listening on 127.0.0.1:{server.port} "
                f"(log: {server.log_file})",
                flush=True,
            )
        url = env["DATABASE_URL"]
        before = migrations.current(url)
        migrations.upgrade(url)
        after = migrations.current(url)
        change = f"already at {after}" if before == after else f"{before or 'empty'} -> {after}"
        print(f"pgcelery: schema {change}; database {dsn.redact(url)}", flush=True)
        print(
            "pgcelery: send a task from another shell with\n"
            f"  DATABASE_URL='{dsn.redact(url)}' {sys.executable} -c "
            '"from pgcelery.celery_app import app; '
            "print(app.send_task('housekeeping.ping').get(timeout=10))\"",
            flush=True,
        )
        return _run_worker(args, env)
    finally:
        if server is not None:
            print("pgcelery: stopping embedded PostgreSQL", flush=True)
            server.stop()


def _run_worker(args: argparse.Namespace, env: dict[str, str]) -> int:
    """Run the worker until it exits; Ctrl-C stops it warm, a second Ctrl-C cold.

    The worker gets its own process group, so a Ctrl-C in the terminal reaches it only through
    us: Celery exits non-zero after a SIGINT, but zero after the same warm shutdown on SIGTERM.
    """
    # The venv's own celery, whether or not the venv is on PATH (`make run` does not activate).
    command = [sys.executable, "-m", *WORKER_COMMAND, f"--loglevel={args.loglevel}"]
    worker = subprocess.Popen([*command, *args.celery_args], env=env, process_group=0)
    interrupts = 0

    def forward(signum: int, frame: object) -> None:
        nonlocal interrupts
        if signum == signal.SIGINT:
            interrupts += 1
        if worker.poll() is None:
            worker.send_signal(signal.SIGQUIT if interrupts > 1 else signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return worker.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if worker.poll() is None:  # we are failing ourselves: never leave the worker behind
            worker.terminate()
            worker.wait()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = sub.add_parser("worker", help="run the worker (embedded DB if DATABASE_URL unset)")
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument("celery_args", nargs=argparse.REMAINDER)
    worker.set_defaults(func=cmd_worker)
