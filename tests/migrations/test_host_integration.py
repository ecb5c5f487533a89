"""A host service's own Alembic project carries pgcelery's revisions: one `upgrade heads`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from pgcelery.exceptions import ConfigurationError
from pgcelery.schema import migrations
from pgcelery.schema.check import check_schema
from tests.support.postgres import libpq
from tests.support.schemas import relations

# The lines docs/howto/migrations.md tells a host to put in its alembic.ini.
ALEMBIC_INI = """\
[alembic]
script_location = %(here)s/migrations
version_locations = %(here)s/migrations/versions pgcelery.migrations:versions
path_separator = space
"""

ENV_PY = """\
from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context

from pgcelery.schema.migrations import exclude_pgcelery

metadata = sa.MetaData()
sa.Table(
    "widget",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("task_id", sa.String(155)),
)

url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
engine = sa.create_engine(url, poolclass=sa.NullPool)
with engine.connect() as connection:
    context.configure(
        connection=connection, target_metadata=metadata, include_name=exclude_pgcelery
    )
    with context.begin_transaction():
        context.run_migrations()
"""

HOST_REVISION = """\
import sqlalchemy as sa
from alembic import op

revision = "h001_widgets"
down_revision = None
branch_labels = ("host",)
depends_on = "0001_initial"


def upgrade() -> None:
    op.create_table(
        "widget",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("task_id", sa.String(155)),
    )


def downgrade() -> None:
    op.drop_table("widget")
"""


def _host_project(root: Path) -> Path:
    (root / "migrations" / "versions").mkdir(parents=True)
    (root / "alembic.ini").write_text(ALEMBIC_INI)
    (root / "migrations" / "env.py").write_text(ENV_PY)
    (root / "migrations" / "versions" / "h001_widgets.py").write_text(HOST_REVISION)
    return root


def _alembic(project: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGCELERY_")}
    env["DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(project / "alembic.ini"), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_host_upgrades_both_histories_at_once(empty_database_url: str, tmp_path: Path) -> None:
    project = _host_project(tmp_path)
    result = _alembic(project, empty_database_url, "upgrade", "heads")
    assert result.returncode == 0, result.stderr

    tables = {name for schema, name, kind in relations(empty_database_url) if kind == "r"}
    assert {"widget", "kombu_message", "celery_taskmeta", "alembic_version"} <= tables
    assert "pgcelery_alembic_version" not in tables
    with psycopg.connect(libpq(empty_database_url)) as conn:
        versions = {r[0] for r in conn.execute("SELECT version_num FROM alembic_version")}
    assert versions == {"h001_widgets", migrations.head()}

    # Workers and producers find pgcelery's revision in the host's version table.
    assert migrations.current(empty_database_url) == migrations.head()
    check_schema(empty_database_url)

    # The host's autogenerate sees no difference: pgcelery's tables are left out.
    checked = _alembic(project, empty_database_url, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    before = relations(empty_database_url)
    again = _alembic(project, empty_database_url, "upgrade", "heads")
    assert again.returncode == 0, again.stderr
    assert relations(empty_database_url) == before

    # pgcelery's own runner must not replay the revisions under a second version table.
    with pytest.raises(ConfigurationError, match="alembic upgrade heads"):
        migrations.upgrade(empty_database_url)
    names = {name for _, name, _ in relations(empty_database_url)}
    assert "pgcelery_alembic_version" not in names
