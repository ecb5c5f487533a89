"""The ``pgcelery`` command: migrate, check, run the worker, purge a queue, show statistics,
list, replay and purge dead letters, list, pause and resume queues, revoke tasks.

Exit codes, the same for every subcommand: 0 success; 1 the command did not do what was asked
(``purge`` without ``--yes``, an unknown queue); 2 invalid configuration or arguments; 3 database
unreachable; 4 pgcelery's schema missing or not at head; 5 missing privileges. Each failure is
one line on stderr that says what to do. See docs/reference/cli.md.

Owns the subcommands, one module per group (``database``: migrate, check, purge, stats;
``worker``; ``dead_letters``; ``dashboard``; ``queues``; ``revoke``), each adding its parsers
with ``register``, and ``environment``: what they read from the environment and how its errors
are told.

May import anything in pgcelery: nothing imports the CLI.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from pgcelery.cli import dashboard, database, dead_letters, environment, queues, revoke, worker
from pgcelery.exceptions import ConfigurationWarning

#: One module per group of subcommands; each adds its parsers with ``register(sub)``.
COMMANDS = (database, worker, dead_letters, dashboard, queues, revoke)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="pgcelery",
        description=(__doc__ or "").partition("\n\nOwns")[0],  # the user's part of the docstring
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = root.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.register(sub)
    return root


def _arguments(argv: list[str]) -> argparse.Namespace:
    # `worker` passes every option it does not know to Celery, in order: argparse cannot.
    if argv[:1] == ["worker"] and not {"-h", "--help"} & set(argv[1:]):
        return worker.parse(argv[1:])
    return parser().parse_args(argv)


_FORMAT_WARNING = warnings.formatwarning


def _one_line(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    """pgcelery's own configuration warnings as one line; any other as Python prints it."""
    if issubclass(category, ConfigurationWarning):
        return f"pgcelery: warning: {message}\n"
    return _FORMAT_WARNING(message, category, filename, lineno, line)


def main(argv: Sequence[str] | None = None) -> int:
    warnings.formatwarning = _one_line
    try:
        args = _arguments(list(sys.argv[1:] if argv is None else argv))
        return int(args.func(args))
    except Exception as exc:
        told = environment.explain(exc)
        if told is None:
            raise
        code, message = told
        print(f"pgcelery: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
