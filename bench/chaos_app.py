"""The app ``make chaos`` workers run: ``celery -A bench.chaos_app worker``.

Configured from the environment the harness gives each worker (``DATABASE_URL``,
``PGCELERY_VISIBILITY_TIMEOUT``, ...), like a deployed worker.
"""

from __future__ import annotations

from pgcelery import create_app

app = create_app("chaos", include=["bench.chaos_tasks"])
