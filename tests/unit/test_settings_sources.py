"""Where settings come from: keyword arguments, the environment, ``.env``, defaults; and the
warning for a PGCELERY_* variable that no setting reads (issue 20)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from pgcelery import variables
from pgcelery.exceptions import ConfigurationWarning
from pgcelery.settings import Settings, unknown_variables, variable_names


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "PGCELERY_VISIBILITY_TIMEOUT", "PGCELERY_SCHEMA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(variables, "_WARNED", set())
    return tmp_path


def test_dotenv_is_read_and_the_environment_wins_over_it(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / ".env").write_text(
        "DATABASE_URL=postgresql://app@from-dotenv/app\n"
        "PGCELERY_VISIBILITY_TIMEOUT=12\n"
        "PGCELERY_SCHEMA=jobs\n"
    )
    read = Settings()
    assert "from-dotenv" in read.database_url
    assert read.visibility_timeout == 12
    assert read.schema_name == "jobs"

    monkeypatch.setenv("PGCELERY_VISIBILITY_TIMEOUT", "20")
    assert Settings().visibility_timeout == 20
    assert Settings(PGCELERY_VISIBILITY_TIMEOUT=25).visibility_timeout == 25


def test_without_dotenv_the_defaults_apply(workdir: Path) -> None:
    assert Settings(DATABASE_URL="postgresql://app@db/app").visibility_timeout == 30.0


def test_a_misspelt_variable_is_reported_with_the_closest_name(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGCELERY_VISIBILITY_TIMOUT", "5")
    (workdir / ".env").write_text("PGCELERY_POOL_SIZE=3\n")
    with pytest.warns(ConfigurationWarning) as caught:
        Settings(DATABASE_URL="postgresql://app@db/app")
    messages = [str(w.message) for w in caught]
    assert any(
        "PGCELERY_VISIBILITY_TIMOUT" in m and "did you mean PGCELERY_VISIBILITY_TIMEOUT?" in m
        for m in messages
    ), messages
    assert any("PGCELERY_POOL_SIZE" in m and "PGCELERY_DB_POOL_SIZE" in m for m in messages)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Settings(DATABASE_URL="postgresql://app@db/app")  # once per process


def test_valid_names_come_from_the_model() -> None:
    names = variable_names()
    assert {"DATABASE_URL", "PGCELERY_SCHEMA", "PGCELERY_VISIBILITY_TIMEOUT"} <= names
    assert len(names) == len(Settings.FIELDS)
    assert unknown_variables({"PGCELERY_SCHEMA", "PGCELERY_SCHEMAS", "HOME"}) == {
        "PGCELERY_SCHEMAS": "PGCELERY_SCHEMA"
    }


def test_env_example_names_only_settings() -> None:
    """`.env.example` is meant to be copied to .env: none of its names may draw a warning."""
    from pgcelery.variables import dotenv_values

    example = Path(__file__).resolve().parents[2] / ".env.example"
    names = set(dotenv_values(str(example)))
    assert "DATABASE_URL" in names
    assert unknown_variables(names) == {}
