"""``pgcelery dead-letters list|replay|purge``: the messages moved to pgcelery_dead_letter."""

from __future__ import annotations

import argparse
import json
import sys

import psycopg

from pgcelery import dsn
from pgcelery.broker import dead_letters
from pgcelery.cli.environment import duration
from pgcelery.schema.names import Names
from pgcelery.settings import Settings


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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        "--older-than", type=duration, metavar="DURATION", help="buried before: 7d, 12h, 30m"
    )
    dead.set_defaults(func=cmd_dead_letters)
