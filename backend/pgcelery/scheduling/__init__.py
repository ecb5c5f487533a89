"""Periodic tasks: a celery beat scheduler kept in PostgreSQL, and pgcelery's default schedule.

Owns ``beat`` (``PgScheduler``: advisory-lock leader election, each run sent once), ``leader``
(the leader's session: its lock, its lease, the fence before each send) and ``schedule`` (the
maintenance entries ``create_app`` puts into ``beat_schedule``).

May import: ``pgcelery.exceptions``, ``dsn``, ``settings``, ``pgcelery.schema`` and the broker.
"""
