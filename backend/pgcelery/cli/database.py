"""``pgcelery migrate``, ``check``, ``purge`` and ``stats``: the schema and the queues' state."""

from __future__ import annotations

import argparse
import json
import os
import sys

import psycopg
from psycopg import sql

from pgcelery import dsn
from pgcelery.cli.environment import database_url
from pgcelery.exceptions import ConfigurationError
from pgcelery.observability import stats
from pgcelery.schema import migrations, preflight
from pgcelery.schema.names import VERSION_TABLE, Names
from pgcelery.settings import MigrationSettings, Settings, warn_unknown_variables


def cmd_migrate(args: argparse.Namespace) -> int:
    url = database_url()
    warn_unknown_variables()
    before = migrations.current(url)
    migrations.upgrade(url, args.revision)
    after = migrations.current(url)
    print(f"pgcelery schema: {before or 'empty'} -> {after} ({dsn.redact(url)})")
    print(f"pgcelery: {_grant_app_role(url)}")
    return 0


def _grant_app_role(url: str) -> str:
    """Grant PGCELERY_APP_ROLE what workers need (again: the role may be newer than the
    revisions that granted it), or say why not."""
    wanted = MigrationSettings()
    role, schema = wanted.app_role, wanted.schema_name
    with psycopg.connect(dsn.libpq_url(url)) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if exists is None:
            return (
                f"grants skipped: role {role!r} (PGCELERY_APP_ROLE) does not exist; create it, "
                "or set PGCELERY_APP_ROLE to the role workers connect as, and run "
                "`pgcelery migrate` again"
            )
        ident = sql.Identifier
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(ident(schema), ident(role)))
        for table, privileges in preflight.REQUIRED_TABLE_PRIVILEGES.items():
            conn.execute(
                sql.SQL("GRANT {} ON TABLE {} TO {}").format(
                    sql.SQL(", ").join(sql.SQL(p) for p in privileges),
                    ident(schema, table),
                    ident(role),
                )
            )
        for sequence in preflight.REQUIRED_SEQUENCES:
            conn.execute(
                sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(
                    ident(schema, sequence), ident(role)
                )
            )
        conn.execute(
            sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(
                ident(schema, VERSION_TABLE), ident(role)
            )
        )
    return f"granted role {role!r} (PGCELERY_APP_ROLE) what workers and producers need"


def cmd_check(args: argparse.Namespace) -> int:
    """Configuration valid, database reachable, schema at head, privileges right."""

    def report(finding: preflight.Finding) -> None:
        mark = "ok  " if finding.ok else "FAIL"
        print(f"{mark} {finding.name}: {finding.detail}", flush=True)

    return int(preflight.run_checks(report, (lambda: _load_app(args.app)) if args.app else None))


def _load_app(name: str) -> None:
    """Import the service's app as ``celery -A`` does and read its configuration."""
    from celery.app.utils import find_app

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        app = find_app(name)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"cannot load the app {name!r} (-A): {exc}") from None
    _ = app.conf.broker_url  # reading the configuration checks its broker and backend


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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    migrate = sub.add_parser("migrate", help="bring the schema to head (DATABASE_URL)")
    migrate.add_argument("--revision", default="head")
    migrate.set_defaults(func=cmd_migrate)
    check = sub.add_parser("check", help="check configuration, database, schema, privileges")
    check.add_argument(
        "-A", "--app", help="also load this Celery app (module[:attr]) and check its broker"
    )
    check.set_defaults(func=cmd_check)
    purge = sub.add_parser("purge", help="delete the waiting messages of a queue")
    purge.add_argument("--queue", required=True, help="queue name, for example celery")
    purge.add_argument("--yes", action="store_true", help="really delete (else: count only)")
    purge.set_defaults(func=cmd_purge)
    stats_cmd = sub.add_parser("stats", help="queue depths, failures and workers")
    stats_cmd.add_argument("--json", action="store_true", help="JSON for scripts")
    stats_cmd.set_defaults(func=cmd_stats)
