"""``pgcelery migrate``, ``check``, ``purge`` and ``stats``: the schema and the queues' state."""

from __future__ import annotations

import argparse
import json
import sys

import psycopg

from pgcelery import dsn
from pgcelery.cli.environment import database_url
from pgcelery.observability import stats
from pgcelery.schema import migrations, preflight
from pgcelery.schema.tables import Names
from pgcelery.settings import Settings


def cmd_migrate(args: argparse.Namespace) -> int:
    url = database_url()
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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
