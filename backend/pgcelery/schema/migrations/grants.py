"""Grant the application role what workers and producers need, when that role exists.

Used by revisions: the role name comes from ``PGCELERY_APP_ROLE`` and is a validated identifier;
it is quoted with ``format('%I')`` inside the DO block so it works in offline (``--sql``) mode
too, where the migration cannot ask the database whether the role exists.

What the role needs, and why nothing more: table DML for publishing, claiming, acking and
storing results; ``USAGE`` on the id sequences (``nextval``, never ``setval``/``currval``);
``USAGE`` on the schema (never ``CREATE``); and ``SELECT`` on the Alembic version table so a
worker can refuse a database that is not at head. Trigger functions and ``pg_notify`` need no
grant: triggers run whatever the inserting role, and ``pg_notify`` is executable by PUBLIC.
"""

from __future__ import annotations

from collections.abc import Iterable

from alembic import op

from pgcelery.settings import MigrationSettings


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _version_table_statement(role: str) -> str:
    """``SELECT`` on whichever version table this run records into (pgcelery's or a host's)."""
    context = op.get_context()
    table = _quote_literal(context.version_table)
    if context.version_table_schema:
        qualified = f"format('%I.%I', {_quote_literal(context.version_table_schema)}, {table})"
    else:
        qualified = f"format('%I', {table})"
    return (
        f"IF to_regclass({qualified}) IS NOT NULL THEN\n"
        f"      EXECUTE format('GRANT SELECT ON TABLE %s TO %I', {qualified}, {role});\n"
        "    END IF;"
    )


def grant(
    tables: Iterable[tuple[str, str]],
    sequences: Iterable[str] = (),
    version_table: bool = False,
    to: str | None = None,
) -> None:
    """Grant ``(table, privileges)`` pairs, ``USAGE`` on ``sequences`` and, with
    ``version_table``, ``SELECT`` on the version table, to the app role (or the validated role
    ``to``) if it exists."""
    settings = MigrationSettings()
    role = _quote_literal(to or settings.app_role)
    schema = _quote_literal(settings.schema_name)
    statements = [f"EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', {schema}, {role});"]
    for table, privileges in tables:
        statements.append(
            f"EXECUTE format('GRANT {privileges} ON TABLE %I.%I TO %I', "
            f"{schema}, {_quote_literal(table)}, {role});"
        )
    for sequence in sequences:
        statements.append(
            f"EXECUTE format('GRANT USAGE ON SEQUENCE %I.%I TO %I', "
            f"{schema}, {_quote_literal(sequence)}, {role});"
        )
    if version_table:
        statements.append(_version_table_statement(role))
    body = "\n    ".join(statements)
    op.execute(
        f"""DO $grant$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {role}) THEN
    {body}
  END IF;
END
$grant$;"""
    )
