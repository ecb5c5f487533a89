"""The package layout: earlier import paths still answer, and the top level stays small."""

from __future__ import annotations

import importlib
import importlib.resources
import pickle
import re
from pathlib import Path

import pytest

import pgcelery
from pgcelery import module_aliases

PACKAGE = Path(pgcelery.__file__).parent
API_DOC = Path(__file__).parents[2] / "docs" / "reference" / "api.md"


@pytest.mark.parametrize(("old", "new"), sorted(module_aliases.MOVED.items()))
def test_an_earlier_path_is_the_moved_module_itself(old: str, new: str) -> None:
    moved = importlib.import_module(new)
    assert importlib.import_module(old) is moved
    # The module keeps its own identity: resources, pickling and reloads follow the real path.
    assert moved.__spec__ is not None
    assert moved.__spec__.name == new


def test_from_imports_of_earlier_paths_work() -> None:
    from pgcelery.beat import PgScheduler  # type: ignore[import-not-found]
    from pgcelery.db import session  # type: ignore[import-not-found]

    from pgcelery.scheduling.beat import PgScheduler as current
    from pgcelery.tenancy.db import session as current_session

    assert PgScheduler is current
    assert session is current_session
    assert pickle.loads(pickle.dumps(PgScheduler))  # noqa: S301 (our own bytes) is current


def test_a_submodule_of_a_moved_package_is_loaded_once() -> None:
    import pgcelery.migrations.environment as old  # type: ignore[import-not-found]

    import pgcelery.schema.migrations.environment as new

    assert old is new


def test_a_hosts_version_location_finds_the_revisions() -> None:
    versions = importlib.resources.files("pgcelery.migrations") / "versions"
    assert versions.is_dir()
    assert any(entry.name.startswith("0001_") for entry in versions.iterdir())


def test_an_unknown_path_is_still_an_import_error() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("pgcelery.no_such_module")
    assert module_aliases.current_path("pgcelery.beatx") is None


def test_every_earlier_path_is_listed_in_the_api_reference() -> None:
    listed = dict(
        re.findall(
            r"^\| `(pgcelery\.[a-z_.]+)`[^|]*\| `(pgcelery\.[a-z_.]+)` \|$",
            API_DOC.read_text(),
            re.M,
        )
    )
    assert listed == module_aliases.MOVED


def test_the_top_level_holds_a_dozen_modules_at_most() -> None:
    modules = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(modules) <= 12, modules


def test_every_subpackage_says_what_it_owns_and_may_import() -> None:
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        package = importlib.import_module(f"pgcelery.{init.parent.name}")
        doc = package.__doc__ or ""
        assert doc.strip(), f"{init} has no docstring"
        if init.parent.name not in {"dashboard", "examples"}:
            assert "Owns" in doc, init
            assert "May import" in doc, init
