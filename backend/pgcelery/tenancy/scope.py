"""The tenant and correlation ids of the code running now, held in contextvars.

Contextvars give each thread and each asyncio task its own ids, so a producer serving many
requests, or a worker running tasks on a thread pool, never sees another caller's tenant.
:mod:`pgcelery.tenancy.db` reads these ids to set the Postgres GUCs, and :mod:`pgcelery.tenancy`
carries them in message headers from a producer to a worker and on to child tasks.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from pgcelery.exceptions import InvalidTenantId, TenantRequired

#: Longest correlation id accepted; it travels in every message header and log line.
MAX_CORRELATION_LENGTH = 200

_TENANT: ContextVar[str | None] = ContextVar("pgcelery_tenant_id", default=None)
_CORRELATION: ContextVar[str | None] = ContextVar("pgcelery_correlation_id", default=None)


@dataclass(frozen=True)
class TenantScope:
    """The ids a block of code runs with; ``tenant_id`` is a canonical UUID string or None."""

    tenant_id: str | None
    correlation_id: str | None


def current_tenant_id() -> str | None:
    """The tenant of the running task or ``tenant_context`` block, as a UUID string; else None."""
    return _TENANT.get()


def current_correlation_id() -> str | None:
    """The correlation id of the running task or ``tenant_context`` block; else None."""
    return _CORRELATION.get()


def current_scope() -> TenantScope:
    return TenantScope(_TENANT.get(), _CORRELATION.get())


def new_correlation_id() -> str:
    return str(uuid.uuid4())


def parse_tenant_id(value: object) -> str:
    """``value`` as a canonical UUID string; TenantRequired if empty, InvalidTenantId if no UUID."""
    if value is None or value == "":
        raise TenantRequired()
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str):
        raise InvalidTenantId(
            f"tenant_id must be a UUID string, got a {type(value).__name__}: "
            "pass str(tenant_uuid) or the UUID itself"
        )
    try:
        return str(uuid.UUID(value))
    except ValueError:
        # Never echo the value: a mistyped id may be some other secret or personal data.
        raise InvalidTenantId() from None


def tenant_or_none(value: object) -> str | None:
    """``value`` as a canonical UUID string, or None when it is missing or not a UUID."""
    try:
        return parse_tenant_id(value)
    except (TenantRequired, InvalidTenantId):
        return None


def parse_correlation_id(value: object) -> str | None:
    """A usable correlation id (a short printable string), or None when ``value`` is not one."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > MAX_CORRELATION_LENGTH or not value.isprintable():
        return None
    return value


@contextmanager
def bound(scope: TenantScope) -> Iterator[TenantScope]:
    """Run a block with exactly ``scope``'s ids, restoring the previous ids on exit."""
    tenant_token = _TENANT.set(scope.tenant_id)
    correlation_token = _CORRELATION.set(scope.correlation_id)
    try:
        yield scope
    finally:
        _CORRELATION.reset(correlation_token)
        _TENANT.reset(tenant_token)


@contextmanager
def tenant_context(
    tenant_id: str | uuid.UUID, correlation_id: str | None = None
) -> Iterator[TenantScope]:
    """Run a block on behalf of ``tenant_id``; tasks sent inside carry the ids to the worker.

    The correlation id defaults to the enclosing block's, else a new UUID. Blocks nest, and each
    restores the ids it found when it exits, even on an exception.
    """
    tenant = parse_tenant_id(tenant_id)
    if correlation_id is None:
        correlation = current_correlation_id() or new_correlation_id()
    else:
        found = parse_correlation_id(correlation_id)
        if found is None:
            raise ValueError(
                "correlation_id must be a printable string of 1 to "
                f"{MAX_CORRELATION_LENGTH} characters"
            )
        correlation = found
    with bound(TenantScope(tenant, correlation)) as scope:
        yield scope
