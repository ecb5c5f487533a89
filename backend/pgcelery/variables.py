"""Where pgcelery's variables come from, and the ``PGCELERY_*`` names that no setting reads.

The process environment first, then a ``.env`` file in the working directory (when there is
one): the order :class:`pgcelery.settings.Settings` reads them in. A ``PGCELERY_*`` name that is
no setting (misspelt, or removed) has no effect, so it is reported with a
:class:`~pgcelery.exceptions.ConfigurationWarning` naming the closest valid name.
"""

from __future__ import annotations

import difflib
import os
import threading
import warnings
from collections.abc import Iterable
from pathlib import Path

from pgcelery.exceptions import ConfigurationWarning

#: The dotenv file read from the working directory, after the environment.
DOTENV = ".env"
PREFIX = "PGCELERY_"
_WARNED: set[str] = set()
_WARNED_LOCK = threading.Lock()


def dotenv_values(path: str = DOTENV) -> dict[str, str]:
    """The variables of the dotenv file ``path`` (none when it does not exist)."""
    if not Path(path).is_file():
        return {}
    from dotenv import dotenv_values as read  # only when there is a file to read

    return {k: v for k, v in read(path, encoding="utf-8").items() if v is not None}


def variable(name: str) -> str:
    """``name`` from the environment, else from ``.env``, else empty (the settings' order)."""
    return os.environ.get(name) or dotenv_values().get(name, "")


def unknown(valid: Iterable[str], names: Iterable[str] | None = None) -> dict[str, str | None]:
    """``PGCELERY_*`` names (default: the environment's and ``.env``'s) not in ``valid``, each
    with the closest valid name or ``None``."""
    valid = frozenset(valid)
    if names is None:
        names = {*os.environ, *dotenv_values()}
    found: dict[str, str | None] = {}
    for name in sorted(names):
        upper = name.upper()
        if upper.startswith(PREFIX) and upper not in valid:
            close = difflib.get_close_matches(upper, valid, n=1, cutoff=0.6)
            found[name] = close[0] if close else None
    return found


def describe(name: str, closest: str | None) -> str:
    hint = f"did you mean {closest}?" if closest else "see docs/reference/settings.md"
    return f"{name} is set but is not a pgcelery setting, so it has no effect: {hint}"


def warn_unknown(valid: Iterable[str]) -> None:
    """Warn, once per variable and process, about ``PGCELERY_*`` names not in ``valid``."""
    for name, closest in unknown(valid).items():
        with _WARNED_LOCK:
            if name in _WARNED:
                continue
            _WARNED.add(name)
        warnings.warn(describe(name, closest), ConfigurationWarning, stacklevel=4)
