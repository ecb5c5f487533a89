"""`pgcelery migrate`, the console command an installed pgcelery migrates with."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pgcelery.schema import migrations
from tests.support.schemas import relations, url_as

PASSWORD = "cli-secret-pw"
PGCELERY = Path(sys.executable).parent / "pgcelery"


def _migrate(tmp_path: Path, database_url: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    # From an unrelated directory: the revisions come from the installed package.
    return subprocess.run(
        [str(PGCELERY), "migrate"], cwd=tmp_path, env=env, capture_output=True, text=True
    )


def test_migrate_brings_an_empty_database_to_head(empty_database_url: str, tmp_path: Path) -> None:
    url = url_as(empty_database_url, "postgres", PASSWORD)
    first = _migrate(tmp_path, url)
    assert first.returncode == 0, first.stderr
    assert f"empty -> {migrations.head()}" in first.stdout
    assert migrations.current(empty_database_url) == migrations.head()
    tables = relations(empty_database_url)

    second = _migrate(tmp_path, url)
    assert second.returncode == 0, second.stderr
    assert f"{migrations.head()} -> {migrations.head()}" in second.stdout
    assert relations(empty_database_url) == tables
    assert PASSWORD not in first.stdout + first.stderr + second.stdout + second.stderr


def test_migrate_without_database_url_says_what_to_set(tmp_path: Path) -> None:
    result = _migrate(tmp_path, None)
    assert result.returncode == 2
    assert "DATABASE_URL is not set" in result.stderr
    assert "Traceback" not in result.stderr
