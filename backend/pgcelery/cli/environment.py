"""What every subcommand reads from its environment, and argument types they share."""

from __future__ import annotations

import argparse
import os

from pgcelery.exceptions import ConfigurationError


def database_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        raise ConfigurationError(
            "DATABASE_URL is not set: set it to a PostgreSQL URL "
            "(postgresql://user:password@host:5432/dbname)."
        )
    return url


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h`` or ``7d``, in seconds."""
    unit = text[-1:].lower()
    number = text[:-1] if unit in _UNITS else text
    try:
        seconds = float(number) * _UNITS.get(unit, 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: write seconds, or a number with s, m, h or d (7d)"
        ) from None
    if seconds < 0:
        raise argparse.ArgumentTypeError("a duration cannot be negative")
    return seconds
