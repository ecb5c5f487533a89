"""Run pgcelery's migrations from an installed package, without the repository.

``upgrade``/``current``/``head`` drive Alembic with the revisions shipped in the wheel
(``pgcelery/migrations/versions``) and pgcelery's own version table, so a host application's
``alembic_version`` is never touched. A host that prefers one Alembic history includes the same
revisions through ``version_locations`` instead (docs/howto/migrations.md).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from pgcelery import dsn
from pgcelery.schema import VERSION_TABLE
from pgcelery.settings import MigrationSettings

HERE = Path(__file__).resolve().parent
VERSIONS = HERE / "versions"
BRANCH = "pgcelery"


def config(database_url: str | None = None) -> Config:
    """An Alembic config for pgcelery's own revisions; ``database_url`` wins over the env."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("version_locations", str(VERSIONS))
    cfg.set_main_option("path_separator", "os")
    if database_url is not None:
        cfg.attributes["database_url"] = database_url
    return cfg


@cache
def head() -> str:
    """The revision the code expects the database to be at."""
    heads = ScriptDirectory.from_config(config()).get_heads()
    assert len(heads) == 1, heads
    return str(heads[0])


@cache
def revisions() -> frozenset[str]:
    """Every revision id pgcelery ships."""
    return frozenset(rev.revision for rev in ScriptDirectory.from_config(config()).walk_revisions())


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database at ``database_url`` up to ``revision`` (idempotent)."""
    command.upgrade(config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Take the database at ``database_url`` down to ``revision`` (``base`` drops everything)."""
    command.downgrade(config(database_url), revision)


def current_on(connection: sa.Connection, schema: str | None = None) -> str | None:
    """The pgcelery revision the connected database is at, or ``None`` if never migrated.

    Looks in pgcelery's version table first, then in a host application's ``alembic_version``
    (where the revisions land when the host includes them in its own history).
    """
    schema = schema or MigrationSettings().schema_name
    ours = revisions()
    candidates = [(schema, VERSION_TABLE), (None, "alembic_version")]
    for table_schema, table in candidates:
        qualified = f'"{table_schema}"."{table}"' if table_schema else f'"{table}"'
        exists = connection.execute(
            sa.text("SELECT to_regclass(:name)"), {"name": qualified}
        ).scalar()
        if exists is None:
            continue
        found = connection.execute(sa.text(f"SELECT version_num FROM {qualified}")).scalars()
        mine = [rev for rev in found if rev in ours]
        if mine:
            return str(mine[0])
    return None


def current(database_url: str) -> str | None:
    """The pgcelery revision the database at ``database_url`` is at, or ``None``."""
    engine = sa.create_engine(dsn.sync_url(database_url), poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            return current_on(connection)
    finally:
        engine.dispose()
