"""``pgcelery worker``: run a Celery worker, on embedded PostgreSQL if DATABASE_URL is unset.

``pgcelery worker [-A APP] [--loglevel LEVEL] [celery worker options…]`` migrates, then runs
``celery -A APP worker -P solo -c 1 --loglevel=LEVEL`` followed by every other option as given
(``-E``, ``-Q reports``, ``-P prefork -c 4``: Celery takes the last value of an option given
twice). ``APP`` defaults to pgcelery's built-in app, ``pgcelery.celery_app``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from pgcelery import celery_overrides, dsn
from pgcelery.exceptions import ConfigurationError
from pgcelery.schema import migrations
from pgcelery.variables import variable

DEFAULT_APP = "pgcelery.celery_app"
#: The worker command of the Procfile, CI and the subprocess test fixture (after ``-A APP``).
WORKER_OPTIONS = ("worker", "-P", "solo", "-c", "1")
WORKER_COMMAND = ("celery", "-A", DEFAULT_APP, *WORKER_OPTIONS)
EMBEDDED_DATABASE = "pgcelery"


def cmd_worker(args: argparse.Namespace) -> int:
    """Run the Procfile worker; without DATABASE_URL, on a private embedded PostgreSQL."""
    env = dict(os.environ)
    if variable("DATABASE_URL"):  # from the environment or .env, as the worker reads it
        env["DATABASE_URL"] = variable("DATABASE_URL")
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
        expected = celery_overrides.Expected(url)
        celery_overrides.refuse(celery_overrides.problems_in_environment(expected, env))
        before = migrations.current(url)
        migrations.upgrade(url)
        after = migrations.current(url)
        change = f"already at {after}" if before == after else f"{before or 'empty'} -> {after}"
        print(f"pgcelery: schema {change}; database {dsn.redact(url)}", flush=True)
        print(_send_hint(url), flush=True)
        return _run_worker(args, env)
    finally:
        if server is not None:
            print("pgcelery: stopping embedded PostgreSQL", flush=True)
            server.stop()


def _send_hint(url: str) -> str:
    """How to send a task from another shell: a command to copy, never one with ``***`` in it."""
    command = (
        f"{sys.executable} -c "
        '"from pgcelery.celery_app import app; '
        "print(app.send_task('housekeeping.ping').get(timeout=10))\""
    )
    if dsn.password_of(url) is None:
        return f"pgcelery: send a task from another shell with\n  DATABASE_URL='{url}' {command}"
    return (
        "pgcelery: send a task from another shell, with the same DATABASE_URL exported there "
        f"(its password is not printed), with\n  {command}"
    )


def parse(argv: list[str]) -> argparse.Namespace:
    """``worker``'s arguments: ``-A/--app`` and ``--loglevel`` are ours, the rest Celery's."""
    app, loglevel, rest = DEFAULT_APP, "INFO", []
    given = iter(argv)
    for arg in given:
        name, eq, value = arg.partition("=")
        if name in ("-A", "--app", "--loglevel"):
            if not eq:
                value = next(given, "")
            if not value:
                raise ConfigurationError(f"pgcelery worker {name} needs a value")
            if name == "--loglevel":
                loglevel = value
            else:
                app = value
        elif arg.startswith("-A") and len(arg) > 2:
            app = arg[2:]
        else:
            rest.append(arg)
    return argparse.Namespace(func=cmd_worker, app=app, loglevel=loglevel, celery_args=rest)


def _run_worker(args: argparse.Namespace, env: dict[str, str]) -> int:
    """Run the worker until it exits; Ctrl-C stops it warm, a second Ctrl-C cold.

    The worker gets its own process group, so a Ctrl-C in the terminal reaches it only through
    us: Celery exits non-zero after a SIGINT, but zero after the same warm shutdown on SIGTERM.
    """
    # The venv's own celery, whether or not the venv is on PATH (`make run` does not activate).
    command = [
        sys.executable, "-m", "celery", "-A", args.app, *WORKER_OPTIONS,
        f"--loglevel={args.loglevel}",
    ]  # fmt: skip
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
    """For ``--help`` only: ``main`` hands ``worker``'s arguments to :func:`parse`."""
    worker = sub.add_parser(
        "worker",
        help="migrate, then run a Celery worker (embedded DB if DATABASE_URL unset)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker.add_argument("-A", "--app", default=DEFAULT_APP, help="the Celery app (module[:attr])")
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument("celery_args", nargs="*", help="any `celery worker` option")
    worker.set_defaults(func=cmd_worker)
