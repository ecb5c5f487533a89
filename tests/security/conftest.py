"""Fixtures for the security suite: an app that signs, raw access to the queue as an attacker
with SQL would have it, and a database migrated with separate producer, worker and ops roles."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from celery import Celery

from pgcelery import create_app
from pgcelery.schema import migrations
from pgcelery.settings import Settings
from pgcelery.tenancy import signing
from tests.support import postgres
from tests.support.schemas import login_role, url_as

SIGNING_KEY = "security-suite-signing-key"


@pytest.fixture
def signed_app(database_url: str) -> Iterator[Celery]:
    settings = Settings(
        DATABASE_URL=database_url,
        PGCELERY_METRICS_ENABLED=False,
        PGCELERY_PRUNE_INTERVAL=0,
        PGCELERY_SIGNING_KEY=SIGNING_KEY,
    )
    app = create_app("pgcelery-security", include=["tests.security.tasks"], settings=settings)
    yield app
    app.close()
    signing.configure("")  # the key is process-wide: later tests run without it


def last_message(url: str) -> tuple[int, dict[str, Any]]:
    """(queue id, decoded payload) of the newest message in ``kombu_message``."""
    with psycopg.connect(postgres.libpq(url)) as conn:
        row = conn.execute(
            "SELECT queue_id, payload FROM kombu_message ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert row is not None, "no message was published"
    return int(row[0]), json.loads(row[1])


def insert_message(url: str, queue_id: int, payload: dict[str, Any] | str) -> None:
    """Insert a message the way a stock producer (or an attacker with SQL) would."""
    text = payload if isinstance(payload, str) else json.dumps(payload)
    with psycopg.connect(postgres.libpq(url)) as conn:
        conn.execute(
            "INSERT INTO kombu_message (id, visible, timestamp, payload, version, queue_id)"
            " VALUES (nextval('message_id_sequence'), true, now(), %s, 1, %s)",
            (text, queue_id),
        )


def messages_in(url: str, queue: str) -> int:
    """How many messages ``queue`` holds."""
    with psycopg.connect(postgres.libpq(url)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM kombu_message m JOIN kombu_queue q ON q.id = m.queue_id"
            " WHERE q.name = %s",
            (queue,),
        ).fetchone()
    return int(row[0]) if row else 0


def copy_as(payload: dict[str, Any], **headers: Any) -> tuple[str, dict[str, Any]]:
    """A copy of ``payload`` with a new task id and ``headers`` changed (None: removed)."""
    copied = json.loads(json.dumps(payload))
    task_id = str(uuid.uuid4())
    copied["headers"]["id"] = task_id
    copied["properties"]["correlation_id"] = task_id
    for name, value in headers.items():
        if value is None:
            copied["headers"].pop(name, None)
        else:
            copied["headers"][name] = value
    return task_id, copied


def edit_body(payload: dict[str, Any], **kwargs: Any) -> None:
    """Change keyword arguments inside the message body (base64 JSON: args, kwargs, embed)."""
    args, old, embed = json.loads(base64.b64decode(payload["body"]))
    payload["body"] = base64.b64encode(json.dumps([args, {**old, **kwargs}, embed]).encode())
    payload["body"] = payload["body"].decode()


@dataclass(frozen=True)
class RoleDatabase:
    owner_url: str
    producer_url: str
    worker_url: str
    ops_url: str
    producer: str
    worker: str
    ops: str


@pytest.fixture
def role_db(pg_admin_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[RoleDatabase]:
    """A database migrated by its owner with PGCELERY_PRODUCER/WORKER/OPS_ROLE set to three
    non-owner, non-superuser roles (and an app role that does not exist)."""
    with ExitStack() as stack:
        producer = stack.enter_context(login_role(pg_admin_url))
        worker = stack.enter_context(login_role(pg_admin_url))
        ops = stack.enter_context(login_role(pg_admin_url))
        name = postgres.unique_name("pgc_sec")
        owner_url = postgres.create_database(pg_admin_url, name)
        stack.callback(postgres.drop_database, pg_admin_url, name)
        monkeypatch.setenv("PGCELERY_APP_ROLE", postgres.unique_name("pgc_absent"))
        monkeypatch.setenv("PGCELERY_PRODUCER_ROLE", producer)
        monkeypatch.setenv("PGCELERY_WORKER_ROLE", worker)
        monkeypatch.setenv("PGCELERY_OPS_ROLE", ops)
        migrations.upgrade(owner_url)
        yield RoleDatabase(
            owner_url,
            url_as(owner_url, producer),
            url_as(owner_url, worker),
            url_as(owner_url, ops),
            producer,
            worker,
            ops,
        )
