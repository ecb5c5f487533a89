"""The ``pgcelery`` command: migrate, check, run the worker, purge a queue, show statistics,
list, replay and purge dead letters, list, pause and resume queues, revoke tasks.

Exit codes: 0 success; 1 the command did not do what was asked (``purge`` without ``--yes``,
an unknown queue); 2 invalid configuration; ``check`` adds 3 (database unreachable), 4 (schema
not at head) and 5 (missing privileges). See docs/reference/cli.md.

Owns the subcommands, one module per group (``database``: migrate, check, purge, stats;
``worker``; ``dead_letters``; ``dashboard``; ``queues``; ``revoke``), each adding its parsers
with ``register``, and ``environment``: what they read from the environment.

May import anything in pgcelery: nothing imports the CLI.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import psycopg

from pgcelery.cli import dashboard, database, dead_letters, queues, revoke, worker
from pgcelery.exceptions import PgceleryError
from pgcelery.schema import preflight

#: One module per group of subcommands; each adds its parsers with ``register(sub)``.
COMMANDS = (database, worker, dead_letters, dashboard, queues, revoke)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="pgcelery", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.register(sub)
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
