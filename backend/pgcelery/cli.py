"""The ``pgcelery`` command: migrate the schema and run the worker (embedded DB by default)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from pgcelery import dsn, migrations
from pgcelery.exceptions import ConfigurationError, PgceleryError

#: The worker command of the Procfile, CI and the subprocess test fixture.
WORKER_COMMAND = ("celery", "-A", "pgcelery.celery_app", "worker", "-P", "solo", "-c", "1")
EMBEDDED_DATABASE = "pgcelery"


def _database_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        raise ConfigurationError(
            "DATABASE_URL is not set: set it to a PostgreSQL URL "
            "(postgresql://user:password@host:5432/dbname)."
        )
    return url


def cmd_migrate(args: argparse.Namespace) -> int:
    url = _database_url()
    before = migrations.current(url)
    migrations.upgrade(url, args.revision)
    after = migrations.current(url)
    print(f"pgcelery schema: {before or 'empty'} -> {after} ({dsn.redact(url)})")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Run the Procfile worker; without DATABASE_URL, on a private embedded PostgreSQL."""
    env = dict(os.environ)
    server = None
    if not env.get("DATABASE_URL"):
        from pgcelery.embedded import EmbeddedPostgres

        datadir = Path(env.get("PGCELERY_EMBEDDED_DIR", ".pgcelery/pgdata"))
        server = EmbeddedPostgres(datadir)
        print(f"pgcelery: starting embedded PostgreSQL in {datadir} ...", flush=True)
        server.start()
        env["DATABASE_URL"] = server.create_database(EMBEDDED_DATABASE)
        print(f"pgcelery: embedded PostgreSQL listening on 127.0.0.1:{server.port}", flush=True)
    url = env["DATABASE_URL"]
    try:
        migrations.upgrade(url)
        print(f"pgcelery: schema at {migrations.current(url)}; database {dsn.redact(url)}")
        print(
            "pgcelery: send a task from another shell with\n"
            f"  DATABASE_URL='{dsn.redact(url)}' .venv/bin/python -c "
            '"from pgcelery.celery_app import app; '
            "print(app.send_task('housekeeping.ping').get(timeout=10))\"",
            flush=True,
        )
        command = [*WORKER_COMMAND, f"--loglevel={args.loglevel}", *args.celery_args]
        worker = subprocess.Popen(command, env=env)
        try:
            return worker.wait()
        except KeyboardInterrupt:
            worker.send_signal(signal.SIGTERM)
            return worker.wait()
    finally:
        if server is not None:
            print("pgcelery: stopping embedded PostgreSQL", flush=True)
            server.stop()


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="pgcelery", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)
    migrate = sub.add_parser("migrate", help="bring the schema to head (DATABASE_URL)")
    migrate.add_argument("--revision", default="head")
    migrate.set_defaults(func=cmd_migrate)
    worker = sub.add_parser("worker", help="run the worker (embedded DB if DATABASE_URL unset)")
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument("celery_args", nargs=argparse.REMAINDER)
    worker.set_defaults(func=cmd_worker)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except PgceleryError as exc:
        print(f"pgcelery: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
