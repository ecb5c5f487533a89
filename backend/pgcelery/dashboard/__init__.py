"""A read-only web dashboard over pgcelery's tables: queues, workers, tasks and failures.

Run it with ``pgcelery dashboard`` (needs the ``dashboard`` extra); see docs/howto/dashboard.md.
``security`` keeps other web sites out (allowed hosts, same-origin POSTs, single-use tokens,
framing and sniffing headers).
"""

from __future__ import annotations

from pgcelery.dashboard.app import create_dashboard

__all__ = ["create_dashboard"]
