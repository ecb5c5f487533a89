"""pgcelery's exceptions.

Every exception's docstring is its default message, so ``raise TenantRequired()`` already says
what went wrong and how to fix it; pass a message to add specifics.
"""

from __future__ import annotations


class PgceleryError(Exception):
    """pgcelery failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigurationError(PgceleryError, ValueError):
    """pgcelery is misconfigured: check DATABASE_URL and the PGCELERY_* variables."""


class ConfigurationWarning(UserWarning):
    """A PGCELERY_* variable is set that no pgcelery setting reads (misspelt?)."""


class SchemaError(PgceleryError):
    """The database schema does not match this version of pgcelery.

    Run `pgcelery migrate` (or `alembic upgrade heads` in a host's Alembic project) against
    DATABASE_URL.
    """


class SchemaNotMigrated(SchemaError):
    """The pgcelery tables do not exist: run `pgcelery migrate`
    (or `alembic upgrade heads` in a host's Alembic project)."""


class SchemaBehind(SchemaError):
    """The database schema is behind the code: run `pgcelery migrate`
    (or `alembic upgrade heads` in a host's Alembic project)."""


class SchemaChangedWhileRunning(SchemaError):
    """The schema changed under a running process: waiting for `pgcelery migrate` to bring it
    back to head (the worker stays up, /health reports 503 until then)."""


class TenancyError(PgceleryError):
    """The task's tenant is missing or invalid."""


class TenantRequired(TenancyError):
    """This task is tenant-scoped: pass tenant_id=<uuid> or send it inside tenant_context()."""


class InvalidTenantId(TenancyError):
    """tenant_id must be a UUID (for example 1b4e28ba-2fa1-11d2-883f-0016d3cca427)."""


class PayloadInvalid(PgceleryError):
    """The task's arguments do not match its declared payload model."""


class BudgetExceeded(PgceleryError):
    """The work would cost more than the task's max_cost_cents allows."""


class DeliveryLimitExceeded(PgceleryError):
    """The task was delivered PGCELERY_MAX_DELIVERIES times without finishing (its worker died
    each time?) and was moved to the dead letters: see `pgcelery dead-letters list`, and replay
    it with `pgcelery dead-letters replay <id>` once fixed."""


class InvalidLimitOption(ConfigurationError):
    """A task's concurrency_limit, concurrency_key, global_rate_limit or rate_limit_key is
    invalid: see docs/howto/limits.md."""


class InvalidUniqueOption(PgceleryError, ValueError):
    """Invalid unique task option: unique_key must be a non-empty string (or a callable of the
    task's arguments returning one, or None), unique_for a number of seconds >= 0, and
    unique_mode "keep" or "replace"."""


class ForgedMessage(TenancyError):
    """The message's tenant headers are not signed with PGCELERY_SIGNING_KEY (or were changed
    after signing): it was refused and never run. Was it inserted behind pgcelery's back?"""


class MessageTooLarge(PgceleryError):
    """The task's message is larger than PGCELERY_MAX_MESSAGE_BYTES: pass a reference to the
    data (a row id, an object-store key) instead of the data itself."""
