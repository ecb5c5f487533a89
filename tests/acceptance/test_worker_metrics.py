"""A real worker subprocess serves /metrics: counts, failures, prefork sums, a taken port."""

from __future__ import annotations

import socket

import pytest
from celery import Celery

from pgcelery import create_app
from pgcelery.settings import Settings
from tests.support.scrape import sample
from tests.support.waiting import wait_until
from tests.support.workers import free_port, http_get, metrics_worker_env, worker_process

TIMEOUT = 60


def _client(database_url: str) -> Celery:
    settings = Settings(DATABASE_URL=database_url, PGCELERY_METRICS_ENABLED=False)
    return create_app("metrics-client", include=["tests.support.tasks"], settings=settings)


def _worker_argv(pool: str, concurrency: int) -> list[str]:
    return [
        *("celery", "-A", "tests.support.app", "worker", "-P", pool, "-c", str(concurrency)),
        *("-I", "tests.support.observed_tasks", "--loglevel=INFO"),
    ]


def _scrape(port: int) -> str:
    status, body = http_get(port, "/metrics")
    return body if status == 200 else ""


@pytest.mark.parametrize(("pool", "concurrency"), [("solo", 1), ("threads", 2)])
def test_metrics_count_successes_and_failures(
    database_url: str, pool: str, concurrency: int
) -> None:
    port = free_port()
    client = _client(database_url)
    argv = _worker_argv(pool, concurrency)
    with worker_process(database_url, argv, metrics_worker_env(port)) as worker:
        results = [client.send_task("tests.add", (i, i)) for i in range(3)]
        assert [r.get(timeout=TIMEOUT) for r in results] == [0, 2, 4]
        failing = client.send_task("tests.fail", ("no luck",))
        failing.get(timeout=TIMEOUT, propagate=False)
        assert failing.state == "FAILURE"

        def counted() -> str:
            body = _scrape(port)
            done = sample(body, "celery_task_succeeded_total", name="tests.add") == 3
            return body if done and sample(body, "celery_task_failed_total") == 1 else ""

        body = wait_until(counted, timeout=TIMEOUT, what="/metrics to count the tasks")
        labels = {"name": "tests.add", "queue_name": "celery"}
        assert sample(body, "celery_task_received_total", **labels) == 3
        assert sample(body, "celery_task_started_total", **labels) == 3
        assert sample(body, "celery_task_runtime_count", **labels) == 3
        assert (
            sample(body, "celery_task_failed_total", name="tests.fail", exception="RuntimeError")
            == 1
        )
        assert sample(body, "celery_task_succeeded_total", name="tests.fail") == 0
        assert sample(body, "celery_worker_up") == 1
        assert sample(body, "celery_queue_length", queue_name="celery") == 0
        assert sample(body, "pgcelery_health_check_ok", check="schema") == 1
        assert "task_id" not in body
        assert results[0].id not in body
        assert worker.alive()


def test_prefork_worker_reports_the_sum_of_its_children(database_url: str) -> None:
    port = free_port()
    client = _client(database_url)
    with worker_process(
        database_url, _worker_argv("prefork", 2), metrics_worker_env(port)
    ) as worker:
        results = [client.send_task("tests.pid_after", (0.5,)) for _ in range(4)]
        pids = {r.get(timeout=TIMEOUT) for r in results}
        assert len(pids) == 2, f"both children should have run tasks: {pids}"
        assert worker.pid not in pids

        def summed() -> bool:
            body = _scrape(port)
            return sample(body, "celery_task_succeeded_total", name="tests.pid_after") == 4

        wait_until(summed, timeout=TIMEOUT, what="/metrics to sum both children")
        body = _scrape(port)
        assert sample(body, "celery_task_started_total", name="tests.pid_after") == 4
        assert sample(body, "celery_task_runtime_count", name="tests.pid_after") == 4
        # One server for the node: the children do not listen on the port.
        assert http_get(port, "/livez")[0] == 200


def test_taken_port_is_logged_and_the_worker_keeps_working(database_url: str) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        client = _client(database_url)
        with worker_process(
            database_url, _worker_argv("solo", 1), metrics_worker_env(port)
        ) as worker:
            wait_until(lambda: "port_in_use" in worker.output(), timeout=TIMEOUT, what="port error")
            line = next(x for x in worker.output().splitlines() if "port_in_use" in x)
            assert f"127.0.0.1:{port}" in line
            assert '"level": "ERROR"' in line
            assert client.send_task("tests.add", (2, 3)).get(timeout=TIMEOUT) == 5
            assert worker.alive()
        assert worker.proc.returncode == 0, worker.output()
