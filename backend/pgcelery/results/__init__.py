"""The result backend: task states and results in ``celery_taskmeta``, woken by NOTIFY.

Owns ``backend`` (Celery's ``db+`` backend on pooled connections, with ``LISTEN``-based waits,
and no SQLAlchemy), ``task_rows`` and ``group_rows`` (Celery's encoding of result and group
rows, in plain SQL),
``deferred_start`` (STARTED stored only for tasks that run long enough to be seen) and
``retention`` (expired results deleted in batches, by beat's task and by the workers' pruner)
``awaiting`` (``await aget(result)``: one async ``LISTEN`` connection per event loop) and
``revocation`` (durable revoke: a waiting task's message deleted as its REVOKED is stored).

May import: ``pgcelery.exceptions``, ``dsn``, ``settings``, ``connections``, ``pgcelery.schema``,
``event_loops``, the broker's ``listener`` and observability's ``redaction``. Never the app
factory, the CLI, tenancy, scheduling or the dashboard.
"""
