"""``pgcelery queue list|pause|resume``: the broker's queues, and pausing them at the database."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import psycopg

from pgcelery import dsn
from pgcelery.broker import pauses
from pgcelery.observability import stats
from pgcelery.schema.names import Names
from pgcelery.settings import Settings


def _internal(name: str) -> bool:
    """Remote control, reply and event queues: not work queues."""
    return name.endswith(".pidbox") or name.startswith(("celeryev.", "celery@"))


def overview(conn: psycopg.Connection[Any], names: Names) -> list[dict[str, Any]]:
    """One dict per work queue (and per queue paused before its first message): name, pending,
    delayed, in_flight, oldest_pending_age, paused. The counts are ``pgcelery stats``'."""
    paused = pauses.paused(conn.execute, names)
    found = {
        q.name: {
            "name": q.name,
            "pending": q.ready,
            "delayed": q.delayed,
            "in_flight": q.in_flight,
            "oldest_pending_age": q.oldest_ready_seconds,
            "paused": q.name in paused,
        }
        for q in stats.collect(conn, names.schema).queues
        if not _internal(q.name)
    }
    for name in paused - found.keys():
        found[name] = {
            "name": name,
            "pending": 0,
            "delayed": 0,
            "in_flight": 0,
            "oldest_pending_age": None,
            "paused": True,
        }
    return [found[name] for name in sorted(found)]


def _table(found: list[dict[str, Any]]) -> str:
    if not found:
        return "no queues"
    lines = [f"{'queue':24} {'pending':>8} {'delayed':>8} {'in flight':>9} {'oldest':>9}  paused"]
    for row in found:
        age = "-" if row["oldest_pending_age"] is None else f"{row['oldest_pending_age']:.1f}s"
        lines.append(
            f"{row['name']:24} {row['pending']:>8} {row['delayed']:>8} {row['in_flight']:>9}"
            f" {age:>9}  {'yes' if row['paused'] else 'no'}"
        )
    return "\n".join(lines)


def cmd_queue(args: argparse.Namespace) -> int:
    """List queues, or pause or resume one."""
    settings = Settings()
    names = Names(settings.schema_name)
    with psycopg.connect(dsn.libpq_url(settings.database_url), autocommit=True) as conn:
        if args.action == "list":
            found = overview(conn, names)
            print(json.dumps(found, indent=2) if args.json else _table(found))
            return 0
        if args.action == "pause":
            changed = pauses.pause(conn, names, args.name)
            print(f"pgcelery: queue {args.name} {'paused' if changed else 'was already paused'}")
            return 0
        changed = pauses.resume(conn, names, args.name)
        if not changed:
            print(f"pgcelery: queue {args.name} is not paused", file=sys.stderr)
            return 1
        print(f"pgcelery: queue {args.name} resumed")
        return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    queue = sub.add_parser("queue", help="list queues; pause or resume one on every worker")
    queue_sub = queue.add_subparsers(dest="action", required=True)
    listing = queue_sub.add_parser("list", help="pending, delayed, in flight, paused per queue")
    listing.add_argument("--json", action="store_true", help="JSON for scripts")
    for action, text in (("pause", "stop every worker claiming from"), ("resume", "resume")):
        one = queue_sub.add_parser(action, help=f"{text} a queue")
        one.add_argument("name", help="queue name (for example celery)")
    queue.set_defaults(func=cmd_queue)
