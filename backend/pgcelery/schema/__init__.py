"""The schema: the tables pgcelery owns, the migrations that make them, and the checks on them.

Owns ``names`` (table names and quoted identifiers, without SQLAlchemy), ``tables``
(SQLAlchemy metadata), ``migrations`` (Alembic revisions and the functions that run them),
``check`` (fail fast on an unmigrated or older database), ``preflight`` (``pgcelery check``:
can a worker start here?) and ``roles`` (the rights of the producer, worker and ops roles).

May import: ``pgcelery.exceptions``, ``dsn`` and ``settings``. Nothing here creates a table at
run time; only ``migrations`` changes the database.
"""
