"""Every setting is documented in docs/reference/settings.md and .env.example, with its default.

When this fails after adding a field to ``pgcelery.settings.Settings``: add a row for its
variable to docs/reference/settings.md and a ``NAME=default`` line to .env.example.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pgcelery.settings import Settings, env_name

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference" / "settings.md"
EXAMPLE = ROOT / ".env.example"

VARIABLES = {env_name(field): field for field in Settings.FIELDS}


def documented() -> dict[str, str]:
    """Variable → the default cell of its row in the reference."""
    rows = re.findall(r"^\| `([A-Z_]+)` \| ([^|]+) \|", REFERENCE.read_text(), re.MULTILINE)
    return {name: cell.strip() for name, cell in rows}


def examples() -> dict[str, str]:
    lines = re.findall(r"^([A-Z_]+)=(.*)$", EXAMPLE.read_text(), re.MULTILINE)
    return dict(lines)


@pytest.mark.parametrize("variable", sorted(VARIABLES))
def test_setting_is_in_the_reference_and_the_example(variable: str) -> None:
    assert variable in documented(), f"{variable}: add a row to {REFERENCE.relative_to(ROOT)}"
    assert variable in examples(), f"{variable}: add {variable}=<default> to .env.example"


def test_nothing_documented_that_does_not_exist() -> None:
    assert set(documented()) - set(VARIABLES) == set()
    assert set(examples()) - set(VARIABLES) == set()


def test_reference_shows_the_defaults_of_the_example() -> None:
    for variable, value in examples().items():
        if variable != "DATABASE_URL":
            assert documented()[variable] == f"`{value}`", variable


def test_example_values_are_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in os.environ:
        if variable == "DATABASE_URL" or variable.startswith("PGCELERY_"):
            monkeypatch.delenv(variable)
    from_example = Settings(_env_file=EXAMPLE)
    for variable, field in VARIABLES.items():
        if variable == "DATABASE_URL":
            continue
        default = Settings.FIELDS[field].default_value()
        assert getattr(from_example, field) == default, variable
