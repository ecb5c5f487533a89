"""Observability: what a worker reports about itself and the queue, with no secrets in it.

Owns ``metrics`` (every metric, declared once), ``signals`` (task counters), ``server``
(``/metrics``, ``/health``, ``/livez``) on ``bounded_http`` (a server half-open connections
cannot exhaust), ``health`` (the probes), ``logging`` (JSON logs with
ids), ``redaction`` (the ``DATABASE_URL`` password scrubbed everywhere), ``heartbeat`` (worker
rows in ``pgcelery_worker``), ``events`` (batched task events), ``stats`` (``pgcelery stats``)
and ``progress`` (task progress read from results).

May import: ``pgcelery.exceptions``, ``dsn``, ``settings``, ``connections``, ``pgcelery.schema``
and tenancy's ``scope``. The broker and the results import ``redaction`` only; nothing below the
app factory imports ``server``.
"""
