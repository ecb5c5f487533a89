"""``pgcelery revoke ID...``: revoke tasks durably (their waiting messages are deleted)."""

from __future__ import annotations

import argparse

from celery.app.control import Control

from pgcelery.app import create_app
from pgcelery.results.revocation import revoke_waiting
from pgcelery.settings import Settings


def cmd_revoke(args: argparse.Namespace) -> int:
    """Delete the waiting messages of the tasks, record REVOKED, and tell the workers."""
    app = create_app("pgcelery-cli", settings=Settings())
    try:
        deleted = revoke_waiting(app, args.ids, reason="revoked from the command line")
        # The broadcast reaches a worker holding one (prefetched, or running with --terminate).
        # Celery's own broadcast (the messages are handled above).
        Control.broadcast(
            app.control,
            "revoke",
            arguments={"task_id": args.ids, "terminate": args.terminate, "signal": args.signal},
        )
    finally:
        app.close()
    for task_id in args.ids:
        if task_id in deleted:
            print(f"pgcelery: {task_id} revoked; its message was deleted")
        else:
            print(f"pgcelery: {task_id} had no waiting message; revoke sent to the workers")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    revoke = sub.add_parser("revoke", help="revoke tasks: delete their waiting messages")
    revoke.add_argument("ids", nargs="+", help="task ids")
    revoke.add_argument(
        "--terminate", action="store_true", help="also terminate a task that is running"
    )
    revoke.add_argument("--signal", default="SIGTERM", help="signal for --terminate")
    revoke.set_defaults(func=cmd_revoke)
