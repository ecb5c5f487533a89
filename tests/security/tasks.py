"""Tasks the security tests send: each records that it ran, and as which tenant."""

from __future__ import annotations

from celery import shared_task

from pgcelery import current_tenant_id, tenant_task

#: (task name, tenant) of every run in this process (the tests use in-process workers).
RUNS: list[tuple[str, str | None]] = []


@tenant_task(name="tests.security.whoami")
def whoami() -> str | None:
    RUNS.append(("whoami", current_tenant_id()))
    return current_tenant_id()


@tenant_task(name="tests.security.whoami_retrying", autoretry_for=(Exception,), max_retries=3)
def whoami_retrying() -> str | None:
    RUNS.append(("whoami_retrying", current_tenant_id()))
    return current_tenant_id()


@shared_task(name="tests.security.plain_whoami")
def plain_whoami() -> str | None:
    RUNS.append(("plain_whoami", current_tenant_id()))
    return current_tenant_id()


@shared_task(name="tests.security.echo")
def echo(value: str) -> int:
    return len(value)


@tenant_task(name="tests.security.whoami_arg")
def whoami_arg(tenant_id: str) -> str:
    RUNS.append(("whoami_arg", tenant_id))
    return tenant_id
