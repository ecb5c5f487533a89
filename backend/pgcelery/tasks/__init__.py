"""Tasks: pgcelery's built-in tasks and the helpers a host writes its own tasks with.

Owns the built-in task modules every ``create_app`` app includes (``housekeeping``,
``maintenance``, with ``maintenance_registry`` for the host's per-tenant handlers) and the
task-writing helpers ``retries`` (backoff with jitter) and ``async_tasks`` (coroutines as tasks),
and ``unique``: the ``unique_key`` options of a send (the broker's ``pgcelery.broker.unique``
enforces them).

May import: ``pgcelery.exceptions``, ``dsn``, ``settings``, ``pgcelery.schema``, tenancy, the
broker's ``unique`` and the results' ``retention``. Never the app factory (a task module is
imported by it), the CLI or the dashboard.
"""
