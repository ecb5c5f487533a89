"""What a published message may be, and what its row records: size limit, tenant and limits.

A message larger than ``PGCELERY_MAX_MESSAGE_BYTES`` is refused at ``apply_async`` with
:class:`~pgcelery.exceptions.MessageTooLarge` before anything is written; one inserted behind
pgcelery's back is measured by the claim in the database (``octet_length``) and buried as a dead
letter without its payload ever reaching the worker (:mod:`pgcelery.broker.message_sql`).

The tenant header of a message is copied into ``kombu_message.tenant_id`` by the same INSERT,
for row-level security (revision ``0010_security_roles``); the worker trusts only the signed
header (:mod:`pgcelery.tenancy.signing`), never the column.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pgcelery.exceptions import MessageTooLarge

#: ``pgcelery.tenancy.TENANT_HEADER`` (the broker does not import tenancy; a test keeps the two
#: equal).
TENANT_HEADER = "pgcelery_tenant_id"
#: The header a limited task's messages carry (:mod:`pgcelery.tasks.limit_options`), and the
#: placeholder in its keys for the message's tenant, filled in here as the row is written.
LIMIT_HEADER = "pgcelery_limit"
TENANT_KEY = "tenant={tenant}"

DEFAULT_MAX_MESSAGE_BYTES = 1_048_576
#: Why a message over the size limit is buried without being read.
OVERSIZED = "oversized payload"
#: UTF-8 takes at most this many bytes per character.
_MAX_BYTES_PER_CHAR = 4


def size_of(body: str) -> int:
    return len(body.encode())


def checked(body: str, limit: int) -> str:
    """``body`` if it fits in ``limit`` bytes of UTF-8; else MessageTooLarge. Short bodies are
    not encoded to be measured: their characters could not make ``limit`` bytes."""
    if len(body) * _MAX_BYTES_PER_CHAR > limit and (len(body) > limit or size_of(body) > limit):
        raise MessageTooLarge(
            f"the task's message is larger than PGCELERY_MAX_MESSAGE_BYTES ({limit} bytes): "
            "pass a reference to the data (a row id, an object-store key) instead"
        )
    return body


def tenant_of(message: dict[str, Any]) -> str | None:
    """The message's tenant header, as stored in ``kombu_message.tenant_id``."""
    headers = message.get("headers")
    value = headers.get(TENANT_HEADER) if isinstance(headers, dict) else None
    return value if isinstance(value, str) else None


class LimitColumns(NamedTuple):
    """``kombu_message``'s limit columns (revision ``0012_fair_limits``); all None: unlimited."""

    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    rate_key: str | None = None
    rate_interval: float | None = None
    limit_task: str | None = None


UNLIMITED = LimitColumns()


def limit_columns(message: dict[str, Any]) -> LimitColumns:
    """The limit columns for ``message``, from its limit header (a malformed header: none)."""
    headers = message.get("headers")
    header = headers.get(LIMIT_HEADER) if isinstance(headers, dict) else None
    if not isinstance(header, dict):
        return UNLIMITED
    tenant = tenant_of(message) or ""
    try:
        concurrency = header.get("concurrency_limit")
        rate = header.get("rate_interval")
        return LimitColumns(
            _filled(header.get("concurrency_key"), tenant) if concurrency else None,
            int(concurrency) if concurrency else None,
            _filled(header.get("rate_key"), tenant) if rate else None,
            float(rate) if rate else None,
            str(header.get("task")),
        )
    except (TypeError, ValueError):
        return UNLIMITED


def _filled(key: Any, tenant: str) -> str:
    return str(key).replace(TENANT_KEY, f"tenant={tenant}")
