"""The ``pgcelery`` command: migrate, check, run the worker, purge a queue, show statistics,
list, replay and purge dead letters.

Exit codes: 0 success; 1 the command did not do what was asked (``purge`` without ``--yes``,
an unknown queue); 2 invalid configuration; ``check`` adds 3 (database unreachable), 4 (schema
not at head) and 5 (missing privileges). See docs/reference/cli.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import psycopg

from pgcelery import dsn
from pgcelery.broker import dead_letters
from pgcelery.exceptions import ConfigurationError, PgceleryError
from pgcelery.observability import stats
from pgcelery.schema import migrations, preflight
from pgcelery.schema.tables import Names
from pgcelery.settings import Settings

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


def cmd_check(args: argparse.Namespace) -> int:
    """Configuration valid, database reachable, schema at head, privileges right."""

    def report(finding: preflight.Finding) -> None:
        mark = "ok  " if finding.ok else "FAIL"
        print(f"{mark} {finding.name}: {finding.detail}", flush=True)

    return int(preflight.run_checks(report))


def cmd_purge(args: argparse.Namespace) -> int:
    """Delete the messages waiting in a queue; messages a worker holds are left alone."""
    settings = Settings()
    names = Names(settings.schema_name)
    with psycopg.connect(dsn.libpq_url(settings.database_url)) as conn:
        row = conn.execute(f"SELECT id FROM {names.queue} WHERE name = %s", (args.queue,))
        found = row.fetchone()
        if found is None:
            known = [r[0] for r in conn.execute(f"SELECT name FROM {names.queue} ORDER BY name")]
            print(
                f"pgcelery: no queue named {args.queue!r}; queues: {', '.join(known) or 'none'}",
                file=sys.stderr,
            )
            return 1
        waiting = f"FROM {names.message} WHERE queue_id = %s AND visible_at <= now()"
        if not args.yes:
            count = conn.execute(f"SELECT count(*) {waiting}", (found[0],)).fetchone()
            print(
                f"pgcelery: would delete {count[0] if count else 0} waiting message(s) from "
                f"{args.queue!r}; run again with --yes to delete them",
                file=sys.stderr,
            )
            return 1
        deleted = conn.execute(f"DELETE {waiting}", (found[0],)).rowcount
    print(f"pgcelery: deleted {deleted} waiting message(s) from {args.queue!r}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Queue depths, oldest waiting message, in flight, recent failures, workers."""
    settings = Settings()
    with psycopg.connect(dsn.libpq_url(settings.database_url), autocommit=True) as conn:
        collected = stats.collect(conn, settings.schema_name)
    if args.json:
        print(json.dumps(collected.as_json(), indent=2))
    else:
        print(stats.render_table(collected))
    return 0


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h`` or ``7d``, in seconds."""
    unit = text[-1:].lower()
    number = text[:-1] if unit in _UNITS else text
    try:
        seconds = float(number) * _UNITS.get(unit, 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: write seconds, or a number with s, m, h or d (7d)"
        ) from None
    if seconds < 0:
        raise argparse.ArgumentTypeError("a duration cannot be negative")
    return seconds


def cmd_dead_letters(args: argparse.Namespace) -> int:
    """List, replay or purge the messages moved to pgcelery_dead_letter."""
    settings = Settings()
    names = Names(settings.schema_name)
    with psycopg.connect(dsn.libpq_url(settings.database_url), autocommit=True) as conn:
        if args.action == "list":
            found = dead_letters.listed(conn, names, args.limit)
            if args.json:
                print(json.dumps(found, indent=2, default=str))
            else:
                print(_dead_letter_table(found))
            return 0
        if args.action == "replay":
            if not args.all and not args.ids:
                print("pgcelery: name dead letter ids, or --all", file=sys.stderr)
                return 1
            replayed = dead_letters.replay(conn, names, None if args.all else args.ids)
            print(f"pgcelery: replayed {len(replayed)} dead letter(s)")
            missing = sorted(set(args.ids) - set(replayed))
            if missing:
                print(f"pgcelery: no dead letter with id {missing}", file=sys.stderr)
                return 1
            return 0
        if not args.ids and args.older_than is None:
            print("pgcelery: name dead letter ids, or --older-than DURATION", file=sys.stderr)
            return 1
        deleted = dead_letters.purge(conn, names, ids=args.ids or None, older_than=args.older_than)
        print(f"pgcelery: deleted {deleted} dead letter(s)")
        return 0


def _dead_letter_table(found: list[dict[str, object]]) -> str:
    if not found:
        return "no dead letters"
    lines = [f"{'id':>10}  {'dead at':19}  {'deliveries':>10}  {'queue':12}  task"]
    for row in found:
        dead_at = str(row["dead_at"])[:19]
        task = f"{row['task_name'] or '?'} [{row['task_id'] or '?'}]"
        lines.append(
            f"{row['id']:>10}  {dead_at:19}  {row['deliveries']:>10}  {row['queue']!s:12}  {task}"
            f"  ({row['reason']}; last worker {row['last_worker'] or '?'})"
        )
    return "\n".join(lines)


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


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve the web dashboard (read-only unless PGCELERY_DASHBOARD_ACTIONS=true)."""
    from pgcelery.dashboard.serve import serve
    from pgcelery.settings import Settings

    settings = Settings()
    port = args.port if args.port is not None else int(os.environ.get("PORT") or 0)
    serve(
        settings,
        host=args.host or settings.dashboard_host,
        port=port or settings.dashboard_port,
        insecure_no_auth=args.insecure_no_auth,
    )
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="pgcelery", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)
    migrate = sub.add_parser("migrate", help="bring the schema to head (DATABASE_URL)")
    migrate.add_argument("--revision", default="head")
    migrate.set_defaults(func=cmd_migrate)
    check = sub.add_parser("check", help="check configuration, database, schema, privileges")
    check.set_defaults(func=cmd_check)
    purge = sub.add_parser("purge", help="delete the waiting messages of a queue")
    purge.add_argument("--queue", required=True, help="queue name, for example celery")
    purge.add_argument("--yes", action="store_true", help="really delete (else: count only)")
    purge.set_defaults(func=cmd_purge)
    stats_cmd = sub.add_parser("stats", help="queue depths, failures and workers")
    stats_cmd.add_argument("--json", action="store_true", help="JSON for scripts")
    stats_cmd.set_defaults(func=cmd_stats)
    worker = sub.add_parser("worker", help="run the worker (embedded DB if DATABASE_URL unset)")
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument("celery_args", nargs=argparse.REMAINDER)
    worker.set_defaults(func=cmd_worker)
    dead = sub.add_parser("dead-letters", help="list, replay or purge dead letters")
    dead_sub = dead.add_subparsers(dest="action", required=True)
    listing = dead_sub.add_parser("list", help="the newest dead letters")
    listing.add_argument("--json", action="store_true", help="JSON for scripts")
    listing.add_argument("--limit", type=int, default=100)
    replaying = dead_sub.add_parser("replay", help="put dead letters back on their queues")
    replaying.add_argument("ids", nargs="*", type=int, help="dead letter ids")
    replaying.add_argument("--all", action="store_true", help="every dead letter")
    purging = dead_sub.add_parser("purge", help="delete dead letters")
    purging.add_argument("ids", nargs="*", type=int, help="dead letter ids")
    purging.add_argument(
        "--older-than", type=_duration, metavar="DURATION", help="buried before: 7d, 12h, 30m"
    )
    dead.set_defaults(func=cmd_dead_letters)
    board = sub.add_parser("dashboard", help="serve the web dashboard (DATABASE_URL)")
    board.add_argument("--host", help="address to bind (default PGCELERY_DASHBOARD_HOST)")
    board.add_argument("--port", type=int, help="port (default $PORT, PGCELERY_DASHBOARD_PORT)")
    board.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow a non-loopback address without basic auth (a proxy authenticates)",
    )
    board.set_defaults(func=cmd_dashboard)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except PgceleryError as exc:
        print(f"pgcelery: {exc}", file=sys.stderr)
        return 2
    except psycopg.OperationalError as exc:
        headline = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"pgcelery: cannot reach the database: {headline}", file=sys.stderr)
        return int(preflight.Exit.UNREACHABLE)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
