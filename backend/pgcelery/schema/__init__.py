"""The schema: the tables pgcelery owns, the migrations that make them, and the checks on them.

Owns ``tables`` (SQLAlchemy metadata and quoted names), ``migrations`` (Alembic revisions and the
functions that run them), ``check`` (fail fast on an unmigrated or older database) and
``preflight`` (``pgcelery check``: can a worker start here?).

May import: ``pgcelery.exceptions``, ``dsn`` and ``settings``. Nothing here creates a table at
run time; only ``migrations`` changes the database.
"""
