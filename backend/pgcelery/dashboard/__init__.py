"""A read-only web dashboard over pgcelery's tables: queues, workers, tasks and failures.

Run it with ``pgcelery dashboard`` (needs the ``dashboard`` extra); see docs/howto/dashboard.md.
"""

from __future__ import annotations

from pgcelery.dashboard.app import create_dashboard

__all__ = ["create_dashboard"]
