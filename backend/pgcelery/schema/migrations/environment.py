"""The body of Alembic's ``env.py``, shared by the repository's ``alembic/`` and the wheel."""

from __future__ import annotations

import os
from logging.config import fileConfig
from typing import Any

import sqlalchemy as sa
from alembic import context

from pgcelery import dsn
from pgcelery.exceptions import ConfigurationError
from pgcelery.schema.names import VERSION_TABLE
from pgcelery.schema.tables import build_metadata
from pgcelery.settings import MigrationSettings


def _url() -> str:
    url = context.config.attributes.get("database_url") or os.environ.get("DATABASE_URL")
    if not url:
        raise ConfigurationError(
            "DATABASE_URL is not set: migrations need it (postgresql://user:password@host/db)."
        )
    return dsn.sync_url(url)


def run() -> None:
    """Run the migrations online, or render them as SQL with ``--sql``."""
    if context.config.config_file_name is not None:
        fileConfig(context.config.config_file_name, disable_existing_loggers=False)
    schema = MigrationSettings().schema_name
    options: dict[str, Any] = {
        "target_metadata": build_metadata(schema),
        "version_table": VERSION_TABLE,
        "version_table_schema": schema,
        "include_schemas": schema != "public",
        "compare_type": True,
        "compare_server_default": True,
    }
    if context.is_offline_mode():
        # Named paramstyle: the pyformat default would double every % in the rendered SQL
        # (format('%I') in the grants), which psql then runs verbatim.
        context.configure(
            url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"}, **options
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = sa.create_engine(_url(), poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            if schema != "public":
                # The version table lives in the schema, so it must exist before Alembic looks.
                connection.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
                connection.commit()
            context.configure(connection=connection, **options)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()
