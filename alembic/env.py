"""Alembic environment for pgcelery's packaged revisions (see environment.py)."""

from __future__ import annotations

from pgcelery.schema.migrations.environment import run

run()
