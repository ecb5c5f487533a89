"""Documented import paths of modules that moved into a subpackage keep working.

``pgcelery.beat:PgScheduler`` in a Procfile, ``from pgcelery import db`` in a task module and
``pgcelery.migrations:versions`` in a host's ``alembic.ini`` predate the subpackages. Rather than a
file per old path, one import hook (installed by ``import pgcelery``) answers each old name with
the module itself, so ``pgcelery.beat is pgcelery.scheduling.beat``: one module object, one set of
globals, nothing imported twice. Submodules follow their package
(``pgcelery.migrations.environment``). The table is listed in docs/reference/api.md.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

#: Old import path → where the module lives now.
MOVED: dict[str, str] = {
    "pgcelery.async_tasks": "pgcelery.tasks.async_tasks",
    "pgcelery.backend": "pgcelery.results.backend",
    "pgcelery.beat": "pgcelery.scheduling.beat",
    "pgcelery.beat_schedule": "pgcelery.scheduling.schedule",
    "pgcelery.db": "pgcelery.tenancy.db",
    "pgcelery.events": "pgcelery.observability.events",
    "pgcelery.maintenance_registry": "pgcelery.tasks.maintenance_registry",
    "pgcelery.migrations": "pgcelery.schema.migrations",
    "pgcelery.payloads": "pgcelery.tenancy.payloads",
    "pgcelery.preflight": "pgcelery.schema.preflight",
    "pgcelery.progress": "pgcelery.observability.progress",
    "pgcelery.retries": "pgcelery.tasks.retries",
    "pgcelery.schema_check": "pgcelery.schema.check",
    "pgcelery.scope": "pgcelery.tenancy.scope",
    "pgcelery.stats": "pgcelery.observability.stats",
    "pgcelery.transactional": "pgcelery.broker.transactional",
    "pgcelery.transport": "pgcelery.broker.transport",
}


def current_path(name: str) -> str | None:
    """Where the module imported as ``name`` lives now, or None when it has not moved."""
    for old, new in MOVED.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    return None


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self) -> None:
        self._own_specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if current_path(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        target = current_path(spec.name)
        assert target is not None  # find_spec answered only for moved names
        module = importlib.import_module(target)
        self._own_specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system has stamped the alias's spec on the module; give it back its own,
        # which importlib.resources (``pgcelery.migrations:versions``) and pickling rely on.
        module.__spec__ = self._own_specs.pop(module.__name__, module.__spec__)


def install() -> None:
    """Answer the old paths in :data:`MOVED` (idempotent)."""
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        # First: the path finder would load a moved package's submodule a second time.
        sys.meta_path.insert(0, _AliasFinder())
