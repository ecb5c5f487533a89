"""Periodic work: a celery beat scheduler kept in PostgreSQL, pgcelery's default schedule, and
the workers' pruner that keeps pgcelery's tables bounded whether beat runs or not.

Owns ``beat`` (``PgScheduler``: advisory-lock leader election, each run sent once), ``leader``
(the leader's session: its lock, its lease, the fence before each send), ``schedule`` (the
maintenance entries ``create_app`` puts into ``beat_schedule``) and ``pruning`` (a worker
bootstep that prunes every table pgcelery writes, one worker at a time).

May import: ``pgcelery.exceptions``, ``dsn``, ``settings``, ``connections``, ``pgcelery.schema``,
the broker, the results' ``retention`` and observability's ``heartbeat``.
"""
