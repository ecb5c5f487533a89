"""Grant the application role what workers and producers need, when that role exists.

Used by revisions: the role name comes from ``PGCELERY_APP_ROLE`` and is a validated identifier;
it is quoted with ``format('%I')`` inside the DO block so it works in offline (``--sql``) mode
too, where the migration cannot ask the database whether the role exists.
"""

from __future__ import annotations

from collections.abc import Iterable

from alembic import op

from pgcelery.settings import MigrationSettings


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def grant(
    tables: Iterable[tuple[str, str]],
    sequences: Iterable[str] = (),
    functions: Iterable[str] = (),
) -> None:
    """Grant ``(table, privileges)`` pairs, and USAGE on sequences, to the app role if it exists."""
    settings = MigrationSettings()
    role = _quote_literal(settings.app_role)
    schema = _quote_literal(settings.schema_name)
    statements = [f"EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', {schema}, {role});"]
    for table, privileges in tables:
        statements.append(
            f"EXECUTE format('GRANT {privileges} ON TABLE %I.%I TO %I', "
            f"{schema}, {_quote_literal(table)}, {role});"
        )
    for sequence in sequences:
        statements.append(
            f"EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %I.%I TO %I', "
            f"{schema}, {_quote_literal(sequence)}, {role});"
        )
    for function in functions:
        statements.append(
            f"EXECUTE format('GRANT EXECUTE ON FUNCTION %I.%s TO %I', "
            f"{schema}, {_quote_literal(function)}, {role});"
        )
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
