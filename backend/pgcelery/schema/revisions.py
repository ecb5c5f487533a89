"""pgcelery's revisions and where a database records them, read without Alembic.

Every process checks at start that its database is at head (:mod:`pgcelery.schema.check`);
loading Alembic's script directory for that would put Alembic, Mako and SQLAlchemy in every
worker's memory. The revisions are a straight chain whose ids are their files' names
(``0013_lean_message_indexes.py``), so the head is the highest; the migrations' tests check
this agrees with Alembic's own reading.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from pgcelery.schema.names import VERSION_TABLE

VERSIONS = Path(__file__).resolve().parent / "migrations" / "versions"
#: Where a host application's Alembic history records revisions, pgcelery's included.
HOST_VERSION_TABLE = "alembic_version"

#: Runs one statement with bound parameters and returns its rows (psycopg or SQLAlchemy).
Query = Callable[[str, dict[str, Any]], Sequence[Sequence[Any]]]


@cache
def revisions() -> tuple[str, ...]:
    """Every revision id pgcelery ships, oldest first."""
    return tuple(sorted(p.stem for p in VERSIONS.glob("[0-9][0-9][0-9][0-9]_*.py")))


def head() -> str:
    """The revision the code expects the database to be at."""
    return revisions()[-1]


def recorded(query: Query, schema: str) -> tuple[str, str] | None:
    """(pgcelery revision, version table it is recorded in), or ``None`` if never migrated.

    Looks in pgcelery's version table first, then in a host application's ``alembic_version``
    (where the revisions land when the host includes them in its own history).
    """
    ours = set(revisions())
    for table_schema, table in ((schema, VERSION_TABLE), (None, HOST_VERSION_TABLE)):
        qualified = f'"{table_schema}"."{table}"' if table_schema else f'"{table}"'
        exists = query("SELECT to_regclass(%(name)s)", {"name": qualified})
        if not exists or exists[0][0] is None:
            continue
        found = query(f"SELECT version_num FROM {qualified}", {})
        mine = [str(row[0]) for row in found if row[0] in ours]
        if mine:
            return mine[0], table
    return None
