"""Every subcommand turns database, schema and configuration errors into one line with the fix
and the documented exit code (docs/reference/cli.md), never a traceback (issue 20)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.support import postgres
from tests.support.schemas import login_role, url_as
from tests.support.workers import free_port

PGCELERY = Path(sys.executable).parent / "pgcelery"
#: Every subcommand that reads the database, as a user types it (dashboard: issue 16).
COMMANDS = [
    ["migrate"],
    ["stats"],
    ["purge", "--queue", "celery", "--yes"],
    ["dead-letters", "list"],
    ["dead-letters", "replay", "--all"],
    ["dead-letters", "purge", "--older-than", "7d"],
    ["worker"],
]


def _run(argv: list[str], database_url: str | None, cwd: Path, **env: str) -> tuple[int, str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if k != "DATABASE_URL" and not k.startswith(("PGCELERY_", "CELERY_"))
    }
    if database_url is not None:
        base["DATABASE_URL"] = database_url
    base["PGCELERY_METRICS_ENABLED"] = "false"
    done = subprocess.run(
        [str(PGCELERY), *argv],
        env={**base, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout, done.stderr


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if not line.startswith("pgcelery: warning:")]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("pgcelery: "), stderr
    return lines[0]


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_an_unreachable_database_exits_3(argv: list[str], tmp_path: Path) -> None:
    nowhere = f"postgresql://nobody:secret-pw@127.0.0.1:{free_port()}/db"
    code, _, stderr = _run(argv, nowhere, tmp_path)
    line = _one_line(stderr)
    assert code == 3, stderr
    assert "cannot reach the database" in line
    assert "secret-pw" not in stderr


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_a_missing_database_exits_3(argv: list[str], pg_admin_url: str, tmp_path: Path) -> None:
    missing = url_as(pg_admin_url, "postgres").rsplit("/", 1)[0] + "/no_such_database_here"
    code, _, stderr = _run(argv, missing, tmp_path)
    line = _one_line(stderr)
    assert code == 3, stderr
    assert "does not exist" in line
    assert "check DATABASE_URL" in line


@pytest.mark.parametrize("argv", COMMANDS[1:6], ids=[" ".join(c) for c in COMMANDS[1:6]])
def test_an_unmigrated_database_exits_4_and_says_migrate(
    argv: list[str], empty_database_url: str, tmp_path: Path
) -> None:
    code, _, stderr = _run(argv, empty_database_url, tmp_path)
    line = _one_line(stderr)
    assert code == 4, stderr
    assert "run `pgcelery migrate`" in line


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_invalid_configuration_exits_2(argv: list[str], tmp_path: Path) -> None:
    code, _, stderr = _run(argv, "redis://localhost:6379/0", tmp_path)
    line = _one_line(stderr)
    assert code == 2, stderr
    assert "DATABASE_URL must point at PostgreSQL" in line


@pytest.mark.parametrize("argv", [["check"], ["worker"]], ids=["check", "worker"])
def test_a_leftover_celery_broker_variable_exits_2(
    argv: list[str], database_url: str, tmp_path: Path
) -> None:
    code, stdout, stderr = _run(
        argv, database_url, tmp_path, CELERY_BROKER_URL="redis://localhost:6379/0"
    )
    assert code == 2, stdout + stderr
    assert "unset CELERY_BROKER_URL" in stdout + stderr
    assert "Traceback" not in stderr


def test_check_with_the_app_reports_a_config_module_that_moves_the_broker(
    database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "leftover_celeryconfig.py").write_text('broker_write_url = "redis://h:6379/0"\n')
    (tmp_path / "service_app.py").write_text(
        "from pgcelery import create_app\n"
        "app = create_app('service')\n"
        "app.config_from_object('leftover_celeryconfig')\n"
    )
    assert _run(["check"], database_url, tmp_path)[0] == 0
    code, stdout, _ = _run(["check", "-A", "service_app"], database_url, tmp_path)
    assert code == 2, stdout
    assert "FAIL configuration: the Celery setting broker_write_url" in stdout
    missing_code, missing_out, _ = _run(["check", "-A", "no_such_module"], database_url, tmp_path)
    assert missing_code == 2
    assert "cannot load the app 'no_such_module'" in missing_out


def test_a_misspelt_variable_is_named_with_the_right_one(database_url: str, tmp_path: Path) -> None:
    code, _, stderr = _run(["stats"], database_url, tmp_path, PGCELERY_VISIBILITY_TIMOUT="5")
    assert code == 0, stderr
    assert (
        "pgcelery: warning: PGCELERY_VISIBILITY_TIMOUT is set but is not a pgcelery setting, "
        "so it has no effect: did you mean PGCELERY_VISIBILITY_TIMEOUT?"
    ) in stderr


def test_dotenv_supplies_database_url(database_url: str, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"DATABASE_URL={database_url}\n")
    code, stdout, stderr = _run(["stats", "--json"], None, tmp_path)
    assert code == 0, stderr
    assert '"queues"' in stdout
    assert _run(["migrate"], None, tmp_path)[0] == 0


def test_migrate_says_when_it_skipped_grants_and_grants_once_the_role_exists(
    pg_admin_url: str, tmp_path: Path
) -> None:
    with login_role(pg_admin_url) as role:
        with psycopg.connect(postgres.libpq(pg_admin_url), autocommit=True) as conn:
            conn.execute(f'DROP ROLE "{role}"')  # a name that does not exist yet
        name = postgres.unique_name("pgc_grants")
        owner_url = postgres.create_database(pg_admin_url, name)
        try:
            code, stdout, stderr = _run(["migrate"], owner_url, tmp_path, PGCELERY_APP_ROLE=role)
            assert code == 0, stderr
            assert f"grants skipped: role '{role}' (PGCELERY_APP_ROLE) does not exist" in stdout
            with psycopg.connect(postgres.libpq(pg_admin_url), autocommit=True) as conn:
                conn.execute(f'CREATE ROLE "{role}" LOGIN')
            code, stdout, stderr = _run(["migrate"], owner_url, tmp_path, PGCELERY_APP_ROLE=role)
            assert code == 0, stderr
            assert f"granted role '{role}' (PGCELERY_APP_ROLE)" in stdout
            check = _run(["check"], url_as(owner_url, role), tmp_path)
            assert check[0] == 0, check[1]
        finally:
            postgres.drop_database(pg_admin_url, name)
