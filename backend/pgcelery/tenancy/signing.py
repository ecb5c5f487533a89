"""Signed tenant headers: a worker runs a task as a tenant only if a key holder said so.

A message's ``pgcelery_tenant_id`` header decides which tenant's rows a task may touch. Anyone
who can insert into ``kombu_message`` (the producer role, an SQL injection in a producer) could
copy a message and change that header; with ``PGCELERY_SIGNING_KEY`` set, every message
pgcelery publishes carries ``pgcelery_signature``, an HMAC-SHA256 over the task id, the task
name, the tenant id and the correlation id, and a worker refuses a message that names a tenant
without a valid signature (:class:`~pgcelery.exceptions.ForgedMessage`).

What is signed and what is not: messages without a tenant header (global tasks, tasks from a
stock Celery producer) run as before; the signature guards the tenant, not the arguments. The
key is process-wide (set by ``create_app``); one HMAC over four short strings costs about a
microsecond, once per publish and once per tenant task run.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import MutableMapping
from typing import Any

from pgcelery.exceptions import ForgedMessage

SIGNATURE_HEADER = "pgcelery_signature"
_VERSION = "v1"
_SEPARATOR = b"\x1f"

log = logging.getLogger(__name__)

_KEY: bytes | None = None


def configure(key: str) -> None:
    """Use ``key`` (``PGCELERY_SIGNING_KEY``) to sign and check messages; empty: no signing."""
    global _KEY
    _KEY = key.encode() if key else None


def enabled() -> bool:
    return _KEY is not None


def _text(value: Any) -> bytes:
    return b"" if value is None else str(value).encode()


def signature(key: bytes, task_id: Any, task_name: Any, tenant_id: Any, correlation_id: Any) -> str:
    """``v1:<hex>``: HMAC-SHA256 of the four values, separated by a byte none of them holds."""
    message = _SEPARATOR.join(map(_text, (task_id, task_name, tenant_id, correlation_id)))
    return f"{_VERSION}:{hmac.new(key, message, hashlib.sha256).hexdigest()}"


def sign(headers: MutableMapping[str, Any], tenant_header: str, correlation_header: str) -> None:
    """Add the signature to a task message's protocol-2 ``headers`` (``id`` and ``task``)."""
    if _KEY is None or "id" not in headers:
        return
    headers[SIGNATURE_HEADER] = signature(
        _KEY,
        headers.get("id"),
        headers.get("task"),
        headers.get(tenant_header),
        headers.get(correlation_header),
    )


def check(task_id: Any, task_name: Any, tenant_id: Any, correlation_id: Any, found: Any) -> None:
    """Raise :class:`ForgedMessage` (and log a security event) unless ``found`` is the
    signature of these values; does nothing when no key is configured."""
    if _KEY is None:
        return
    expected = signature(_KEY, task_id, task_name, tenant_id, correlation_id)
    if isinstance(found, str) and hmac.compare_digest(found.encode(), expected.encode()):
        return
    log.error(
        "pgcelery.security.forged_message",
        extra={
            "task_id": task_id,
            "task_name": task_name,
            "reason": "missing signature" if found is None else "wrong signature",
        },
    )
    raise ForgedMessage()
