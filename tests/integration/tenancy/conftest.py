"""Fixtures for tenancy tests: a database with RLS-protected notes, a non-owner role, and an app
and in-process worker connected as that role with a pgcelery.db pool of one connection."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from celery import Celery
from celery.contrib.testing.worker import TestWorkController
from sqlalchemy.engine import make_url

from pgcelery import create_app
from pgcelery.settings import Settings
from pgcelery.tenancy import db
from tests.support import rls
from tests.support.postgres import drop_database
from tests.support.workers import solo_worker

#: Tenant i owns i + 1 notes, so every tenant's row count is distinct.
TENANT_COUNT = 5


@pytest.fixture
def tenants() -> list[uuid.UUID]:
    return [uuid.uuid4() for _ in range(TENANT_COUNT)]


def notes_of(tenants: list[uuid.UUID], tenant: uuid.UUID) -> int:
    return tenants.index(tenant) + 1


@pytest.fixture
def role_url(pg_admin_url: str, database_url: str, tenants: list[uuid.UUID]) -> Iterator[str]:
    """DATABASE_URL of a non-owner, non-superuser role in a database with ``tenant_notes``."""
    rls.create_tenant_table(
        database_url,
        [(tenant, f"note {n}") for i, tenant in enumerate(tenants) for n in range(i + 1)],
    )
    role, url = rls.create_app_role(pg_admin_url, database_url)
    yield url
    db.dispose()
    # The database goes first: the role cannot be dropped while it holds grants in it.
    drop_database(pg_admin_url, str(make_url(database_url).database))
    rls.drop_role(pg_admin_url, role)


@pytest.fixture
def tenant_settings(role_url: str) -> Settings:
    return Settings(
        DATABASE_URL=role_url,
        metrics_enabled=False,
        db_pool_size=1,
        db_max_overflow=0,
    )


@pytest.fixture
def tenant_app(tenant_settings: Settings) -> Iterator[Celery]:
    app = create_app(
        "pgcelery-tenancy-test",
        include=["tests.support.tenant_tasks", "pgcelery.examples.budgeted"],
        settings=tenant_settings,
    )
    yield app
    app.close()


@pytest.fixture
def tenant_worker(tenant_app: Celery) -> Iterator[TestWorkController]:
    with solo_worker(tenant_app) as controller:
        yield controller
