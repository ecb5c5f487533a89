"""Dashboard fixtures: the ASGI app over a real migrated database, results from a real worker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery
from starlette.testclient import TestClient

from pgcelery.dashboard import create_dashboard
from pgcelery.settings import Settings


@pytest.fixture
def board_settings(database_url: str) -> Settings:
    return Settings(
        DATABASE_URL=database_url,
        PGCELERY_METRICS_ENABLED=False,
        PGCELERY_DASHBOARD_ACTIONS=True,
    )


@pytest.fixture
def client(board_settings: Settings, app: Celery) -> Iterator[TestClient]:
    with TestClient(create_dashboard(board_settings, app), base_url="http://localhost") as http:
        yield http
