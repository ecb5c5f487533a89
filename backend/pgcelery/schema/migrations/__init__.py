"""Run pgcelery's migrations from an installed package, without the repository.

``upgrade``/``current``/``head`` drive Alembic with the revisions shipped in the wheel
(``pgcelery/migrations/versions``) and pgcelery's own version table, so a host application's
``alembic_version`` is never touched. A host that prefers one Alembic history includes the same
revisions through ``version_locations`` instead (docs/howto/migrations.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from pgcelery import dsn
from pgcelery.exceptions import ConfigurationError
from pgcelery.schema import revisions as shipped
from pgcelery.schema.names import (
    BEAT_TABLE,
    BINDING_TABLE,
    BROADCAST_TABLE,
    CHORD_PART_TABLE,
    CHORD_TABLE,
    DEAD_LETTER_TABLE,
    GROUP_TABLE,
    LIMIT_STATE_TABLE,
    MESSAGE_TABLE,
    PAUSE_TABLE,
    QUEUE_TABLE,
    TASK_TABLE,
    TENANT_WEIGHT_TABLE,
    UNIQUE_HOLD_TABLE,
    VERSION_TABLE,
    WORKER_TABLE,
)
from pgcelery.settings import MigrationSettings

HERE = Path(__file__).resolve().parent
VERSIONS = HERE / "versions"
BRANCH = "pgcelery"
HOST_VERSION_TABLE = shipped.HOST_VERSION_TABLE
PGCELERY_TABLES = frozenset(
    {
        QUEUE_TABLE,
        MESSAGE_TABLE,
        TASK_TABLE,
        GROUP_TABLE,
        BROADCAST_TABLE,
        BINDING_TABLE,
        WORKER_TABLE,
        BEAT_TABLE,
        DEAD_LETTER_TABLE,
        CHORD_TABLE,
        CHORD_PART_TABLE,
        UNIQUE_HOLD_TABLE,
        PAUSE_TABLE,
        TENANT_WEIGHT_TABLE,
        LIMIT_STATE_TABLE,
        VERSION_TABLE,
    }
)
T = TypeVar("T")


def config(database_url: str | None = None) -> Config:
    """An Alembic config for pgcelery's own revisions; ``database_url`` wins over the env."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("version_locations", str(VERSIONS))
    cfg.set_main_option("path_separator", "os")
    if database_url is not None:
        cfg.attributes["database_url"] = database_url
    return cfg


def head() -> str:
    """The revision the code expects the database to be at."""
    return shipped.head()


@cache
def revisions() -> frozenset[str]:
    """Every revision id pgcelery ships, as Alembic reads its script directory."""
    return frozenset(rev.revision for rev in ScriptDirectory.from_config(config()).walk_revisions())


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database at ``database_url`` up to ``revision`` (idempotent).

    Refuses a database whose pgcelery revisions a host application's Alembic history records:
    running them again under pgcelery's own version table would try to create every table twice.
    """
    found = _on_url(database_url, lambda connection: _recorded(connection, _schema()))
    if found is not None and found[1] == HOST_VERSION_TABLE:
        raise ConfigurationError(
            f"pgcelery's revisions in {dsn.redact(database_url)} are recorded in the host "
            f"application's {HOST_VERSION_TABLE} (database at {found[0]}): run `alembic "
            "upgrade heads` in the host project instead of `pgcelery migrate`"
        )
    command.upgrade(config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Take the database at ``database_url`` down to ``revision`` (``base`` drops everything)."""
    command.downgrade(config(database_url), revision)


def _schema() -> str:
    return MigrationSettings().schema_name


def _recorded(connection: sa.Connection, schema: str) -> tuple[str, str] | None:
    """(pgcelery revision, version table it is recorded in), or ``None`` if never migrated."""
    return shipped.recorded(
        lambda sql, params: connection.exec_driver_sql(sql, params).fetchall(), schema
    )


def current_on(connection: sa.Connection, schema: str | None = None) -> str | None:
    """The pgcelery revision the connected database is at, or ``None`` if never migrated.

    Looks in pgcelery's version table first, then in a host application's ``alembic_version``
    (where the revisions land when the host includes them in its own history).
    """
    found = _recorded(connection, schema or _schema())
    return found[0] if found else None


def _on_url(database_url: str, read: Callable[[sa.Connection], T]) -> T:
    engine = sa.create_engine(dsn.sync_url(database_url), poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            return read(connection)
    finally:
        engine.dispose()


def current(database_url: str) -> str | None:
    """The pgcelery revision the database at ``database_url`` is at, or ``None``."""
    return _on_url(database_url, current_on)


def exclude_pgcelery(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
    """``include_name`` for a host's autogenerate: leave pgcelery's tables out of the diff."""
    return not (type_ == "table" and name in PGCELERY_TABLES)
