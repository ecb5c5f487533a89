"""The Celery apps the benchmark compares, chosen by BENCH_CONFIG (stock, pgcelery, fair-off:
pgcelery with ``PGCELERY_FAIR_TENANTS=false``, redis, rabbitmq).

Each configuration runs in its own processes: pgcelery repoints kombu's ``sqla`` transport
process-wide, so the stock configuration must never import pgcelery.
"""

from __future__ import annotations

import os
import time

from celery import Celery


def _build() -> Celery:
    config = os.environ["BENCH_CONFIG"]
    if config in ("pgcelery", "fair-off"):
        from pgcelery import create_app

        app = create_app("bench")
    elif config == "stock":
        url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
        app = Celery("bench", broker=f"sqla+{url}", backend=f"db+{url}")
    elif config == "redis":
        url = os.environ["BENCH_REDIS_URL"]
        app = Celery("bench", broker=url, backend=url)
    elif config == "rabbitmq":
        # What a RabbitMQ user would pick: amqp:// for tasks, rpc:// for results.
        app = Celery("bench", broker=os.environ["BENCH_AMQP_URL"], backend="rpc://")
    else:
        raise SystemExit(f"unknown BENCH_CONFIG {config!r}")
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_send_task_events=os.environ.get("BENCH_EVENTS") == "1",
    )
    return app


app = _build()


@app.task(name="bench.noop")
def noop() -> float:
    """Return when the task started (wall clock), for pickup latency."""
    return time.time()


@app.task(name="bench.count")
def count(results: list[float]) -> int:
    """A chord body: how many header results it got."""
    return len(results)


@app.task(name="bench.sleep10")
def sleep10() -> None:
    time.sleep(0.01)
