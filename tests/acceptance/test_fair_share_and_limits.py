"""Fair share and cluster-wide limits on real worker subprocesses (issue 18's scenarios).

Every task records its start and end in ``test_spans`` (tests/support/limited_tasks.py), so
"never more than N at once" and "B's all finished before A's 200th" are read off the table.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime

import psycopg
import pytest
from celery import Celery

from pgcelery import set_tenant_weight
from pgcelery.settings import Settings
from tests.support import limited_tasks
from tests.support.postgres import libpq, scalar
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess, worker_process

APP = ["celery", "-A", "tests.support.limits_app", "worker", "-l", "WARNING"]
Span = tuple[str, str | None, datetime, datetime]


@pytest.fixture
def spans_db(runs_db: str) -> str:
    with psycopg.connect(libpq(runs_db), autocommit=True) as conn:
        conn.execute(limited_tasks.SPANS_TABLE)
    return runs_db


def _spans(url: str, label: str | None = None) -> list[Span]:
    query = "SELECT label, tenant, started, ended FROM test_spans"
    with psycopg.connect(libpq(url)) as conn:
        if label is None:
            return list(conn.execute(query + " ORDER BY started").fetchall())
        return list(conn.execute(query + " WHERE label = %s ORDER BY started", (label,)))


def _most_at_once(spans: list[Span]) -> int:
    """The most spans running at the same moment (an end at the instant of a start counts as
    before it)."""
    edges = sorted([(s[2], 1) for s in spans] + [(s[3], -1) for s in spans], key=lambda e: e[:2])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def _count(url: str) -> int:
    return int(str(scalar(url, "SELECT count(*) FROM test_spans")))


@contextmanager
def _workers(
    url: str, count: int, argv: list[str], env: dict[str, str]
) -> Iterator[list[WorkerProcess]]:
    with ExitStack() as stack:
        yield [
            stack.enter_context(worker_process(url, [*argv, "-n", f"w{i}@%h"], env))
            for i in range(count)
        ]


def test_a_flood_from_one_tenant_does_not_delay_the_others(runs_app: Celery, spans_db: str) -> None:
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    for _ in range(2000):
        limited_tasks.tenant_work.delay(tenant_id=a, label="A", seconds=0.01)
    for tenant, label in ((b, "B"), (c, "C")):
        for _ in range(20):
            limited_tasks.tenant_work.delay(tenant_id=tenant, label=label)
    with worker_process(spans_db, [*APP, "-P", "solo"]):
        wait_until(
            lambda: (
                int(str(scalar(spans_db, "SELECT count(*) FROM test_spans WHERE label <> 'A'")))
                == 40
            ),
            timeout=120,
            what="B's and C's tasks",
        )
        wait_until(lambda: len(_spans(spans_db, "A")) >= 200, timeout=120, what="A's 200th")
    spans = _spans(spans_db)
    a_200th_end = sorted(s[3] for s in spans if s[0] == "A")[199]
    others = [s for s in spans if s[0] != "A"]
    assert len(others) == 40
    assert max(s[3] for s in others) < a_200th_end


def test_with_fair_share_off_the_queue_is_first_come_first_served(
    runs_app: Celery, spans_db: str
) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    for _ in range(100):
        limited_tasks.tenant_work.delay(tenant_id=a, label="A")
    for _ in range(5):
        limited_tasks.tenant_work.delay(tenant_id=b, label="B")
    with worker_process(spans_db, [*APP, "-P", "solo"], {"PGCELERY_FAIR_TENANTS": "false"}):
        wait_until(lambda: _count(spans_db) == 105, timeout=120, what="all 105 tasks")
    order = [s[0] for s in _spans(spans_db)]
    assert order == ["A"] * 100 + ["B"] * 5


def test_a_tenant_of_weight_3_gets_three_fifths_of_the_claims(
    runs_app: Celery, spans_db: str
) -> None:
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    set_tenant_weight(b, 3, Settings(DATABASE_URL=spans_db))
    for tenant, label in ((a, "A"), (b, "B"), (c, "C")):
        for _ in range(150):
            limited_tasks.tenant_work.delay(tenant_id=tenant, label=label)
    with worker_process(spans_db, [*APP, "-P", "solo"]):
        wait_until(lambda: _count(spans_db) >= 200, timeout=120, what="200 tasks")
    # While all three have a backlog: B runs out first, after 150 of its tasks (~250 in all).
    first = [s[0] for s in _spans(spans_db)][:200]
    share = first.count("B") / len(first)
    assert 0.54 <= share <= 0.66, (share, first.count("A"), first.count("C"))
    assert abs(first.count("A") - first.count("C")) <= 0.1 * len(first)


def test_a_concurrency_limit_holds_across_workers_and_other_work_flows(
    runs_app: Celery, spans_db: str
) -> None:
    for _ in range(12):
        limited_tasks.capped.delay(label="capped", seconds=0.5)
    for _ in range(30):
        limited_tasks.global_work.delay(label="other", seconds=0.05)
    with _workers(spans_db, 3, [*APP, "-P", "prefork", "-c", "2"], {}):
        wait_until(lambda: _count(spans_db) == 42, timeout=120, what="all 42 tasks")
    capped, other = _spans(spans_db, "capped"), _spans(spans_db, "other")
    assert _most_at_once(capped) == 2
    # The other tasks did not wait behind the capped ones (12 of 0.5 s two at a time: 3 s).
    assert max(s[3] for s in other) < max(s[3] for s in capped)


def test_a_per_tenant_limit_runs_one_per_tenant_and_tenants_side_by_side(
    runs_app: Celery, spans_db: str
) -> None:
    tenants = [str(uuid.uuid4()) for _ in range(3)]
    for _ in range(4):
        for tenant in tenants:
            limited_tasks.one_per_tenant.delay(tenant_id=tenant, label="per-tenant")
    with _workers(spans_db, 3, [*APP, "-P", "prefork", "-c", "2"], {}):
        wait_until(lambda: _count(spans_db) == 12, timeout=120, what="all 12 tasks")
    spans = _spans(spans_db)
    for tenant in tenants:
        assert _most_at_once([s for s in spans if s[1] == tenant]) == 1
    assert _most_at_once(spans) == 3


def test_a_global_rate_limit_holds_across_workers_without_slowing_below_it(
    runs_app: Celery, spans_db: str
) -> None:
    with _workers(spans_db, 3, [*APP, "-P", "prefork", "-c", "2"], {}):
        wait_until(
            lambda: scalar(spans_db, "SELECT count(*) FROM pgcelery_worker") == 3,
            timeout=60,
            what="the three workers to be up",
        )
        sent = time.monotonic()
        for _ in range(40):
            limited_tasks.rated.delay(label="rated")
        wait_until(lambda: _count(spans_db) == 40, timeout=30, what="all 40 rated tasks")
        took = time.monotonic() - sent
    starts = [s[2] for s in _spans(spans_db, "rated")]
    worst = max(sum(1 for t in starts if 0 <= (t - s).total_seconds() < 1.0) for s in starts)
    assert worst <= 6, worst
    assert took < 10, took


def test_a_killed_worker_frees_its_slot_when_its_lease_runs_out(
    runs_app: Celery, spans_db: str
) -> None:
    env = {"PGCELERY_VISIBILITY_TIMEOUT": "3"}
    for _ in range(4):
        limited_tasks.capped.delay(label="capped", seconds=1.5)
    with worker_process(spans_db, [*APP, "-P", "solo"], env) as victim:
        wait_until(
            lambda: (
                scalar(
                    spans_db,
                    "SELECT count(*) FROM kombu_message WHERE concurrency_key IS NOT NULL"
                    " AND lease_token IS NOT NULL AND visible_at > now()",
                )
                >= 1
            ),
            timeout=60,
            what="the victim to hold a slot",
        )
        victim.signal(signal.SIGKILL)
        wait_until(lambda: not victim.alive(), timeout=10, what="the victim to die")
    with _workers(spans_db, 2, [*APP, "-P", "solo"], env):
        wait_until(lambda: _count(spans_db) == 4, timeout=90, what="all 4 capped tasks")
        wait_until(
            lambda: scalar(spans_db, "SELECT count(*) FROM kombu_message") == 0,
            timeout=30,
            what="every message acked",
        )
    assert _most_at_once(_spans(spans_db)) <= 2


def test_a_concurrency_limit_holds_while_every_backend_is_terminated(
    runs_app: Celery, spans_db: str
) -> None:
    """Every backend of the database terminated every half second while capped tasks run on two
    prefork workers: still never more than two at once, and each task runs exactly once."""
    for _ in range(10):
        limited_tasks.capped.delay(label="capped", seconds=0.5)
    with _workers(spans_db, 2, [*APP, "-P", "prefork", "-c", "2"], {}):
        deadline = time.monotonic() + 120
        while _count(spans_db) < 10 and time.monotonic() < deadline:
            with psycopg.connect(libpq(spans_db), autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            time.sleep(0.5)  # the storm's rhythm, not a wait for a result
        wait_until(
            lambda: scalar(spans_db, "SELECT count(*) FROM kombu_message") == 0,
            timeout=60,
            what="every message acked",
        )
    spans = _spans(spans_db)
    assert len(spans) == 10
    assert _most_at_once(spans) <= 2
