"""Measure one configuration (run as ``python -m bench.measure``); prints one JSON object.

Starts its own worker processes, then: enqueue rate and end-to-end throughput (2,000 no-op
tasks with results) with the CPU time each process spent on them, round trip and pickup latency
(300 sequential tasks), scaling on a 10 ms task, worker RSS before and after 10,000 tasks, and
what is left in ``kombu_message``; a chord of 1,000 no-op tasks end to end, and the enqueue
rate of a group of 10,000.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
E2E_TASKS = int(os.environ.get("BENCH_E2E_TASKS", "2000"))
RTT_TASKS = int(os.environ.get("BENCH_RTT_TASKS", "300"))
RSS_TASKS = int(os.environ.get("BENCH_RSS_TASKS", "10000"))
SCALE_TASKS = int(os.environ.get("BENCH_SCALE_TASKS", "400"))
#: BENCH_WORKERS value of one prefork worker with two child processes.
PREFORK = 0
SERVER_PROCESS = {"redis": "redis-server", "rabbitmq": "beam.smp"}
CHORD_TASKS = int(os.environ.get("BENCH_CHORD_TASKS", "1000"))
BULK_TASKS = int(os.environ.get("BENCH_BULK_TASKS", "10000"))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Workers:
    """``count`` solo worker processes, or (``count`` of ``PREFORK``) one prefork worker with
    two child processes."""

    def __init__(self, count: int) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        pool = ["-P", "prefork", "-c", "2"] if count == PREFORK else ["-P", "solo", "-c", "1"]
        for n in range(1 if count == PREFORK else count):
            argv = [
                sys.executable, "-m", "celery", "-A", "bench.apps", "worker", *pool,
                "-n", f"bench{n}@%h", "--without-heartbeat", "--without-mingle",
                "--without-gossip", "-l", "ERROR",
            ]  # fmt: skip
            env = {**os.environ, "PGCELERY_METRICS_ENABLED": "false"}
            self.procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL))

    def rss_mb(self) -> list[float]:
        return [psutil.Process(p.pid).memory_info().rss / 2**20 for p in self.procs]

    def all_processes(self) -> list[psutil.Process]:
        """Every worker process, prefork children included."""
        found = []
        for proc in self.procs:
            parent = psutil.Process(proc.pid)
            found += [parent, *parent.children(recursive=True)]
        return found

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def _cpu(proc: psutil.Process) -> float:
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


class CpuClock:
    """CPU seconds of the processes a task passes through: this client, the workers, the
    server's processes (PostgreSQL or Redis, when they run on this machine and can be read) and
    an event receiver (BENCH_RECEIVER_PID). Less noisy than wall-clock throughput on a shared
    host, and it shows where the time goes."""

    def __init__(self, workers: Workers, server: str) -> None:
        self._server = server
        self._own: dict[str, list[psutil.Process]] = {
            "client": [psutil.Process()],
            "workers": workers.all_processes(),
        }
        receiver = os.environ.get("BENCH_RECEIVER_PID")
        if receiver:
            self._own["receiver"] = [psutil.Process(int(receiver))]
        self._start = self._now()

    def _now(self) -> dict[str, dict[int, float]]:
        found = {part: {p.pid: _cpu(p) for p in procs} for part, procs in self._own.items()}
        # Server processes are listed afresh: a backend that connected meanwhile counts too.
        found["server"] = {
            p.pid: _cpu(p) for p in psutil.process_iter(["name"]) if p.info["name"] == self._server
        }
        return found

    def spent_ms_per(self, tasks: int) -> dict[str, float]:
        """CPU milliseconds per task of each part since this clock was made."""
        now = self._now()
        return {
            part: sum(t - self._start[part].get(pid, 0.0) for pid, t in times.items())
            / tasks
            * 1000
            for part, times in now.items()
        }


def _wait_all(results: list[Any]) -> None:
    for result in results:
        result.get(timeout=600)


def _drain(app: Any, config: str) -> None:
    """Wait until the workers have taken every message (results were not stored)."""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if _pending(app, config) == 0:
            return
        time.sleep(0.2)
    raise TimeoutError("queue did not drain")


def _pending(app: Any, config: str) -> int:
    if config == "redis":
        import redis

        return int(redis.Redis.from_url(os.environ["BENCH_REDIS_URL"]).llen("celery"))
    if config == "rabbitmq":
        with app.connection_for_read() as conn:
            declared = conn.default_channel.queue_declare("celery", passive=True)
        return int(declared.message_count)
    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        visible = "visible" if config == "stock" else "true"
        row = conn.execute(f"SELECT count(*) FROM kombu_message WHERE {visible}").fetchone()
    return int(row[0]) if row else 0


def _table_size() -> tuple[int, int]:
    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        row = conn.execute(
            "SELECT count(*), pg_total_relation_size('kombu_message') FROM kombu_message"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def main() -> None:
    config = os.environ["BENCH_CONFIG"]
    count = int(os.environ.get("BENCH_WORKERS", "1"))
    from celery import chord, group

    from bench.apps import app, noop, sleep10
    from bench.apps import count as count_results

    out: dict[str, Any] = {"config": config, "workers": count}
    with ExitStack() as stack:
        workers = Workers(count)
        stack.callback(workers.stop)
        noop.delay().get(timeout=120)  # workers are up
        for _ in range(20):
            noop.delay().get(timeout=60)  # warm up connections
        out["rss_start_mb"] = max(workers.rss_mb())

        clock = CpuClock(workers, SERVER_PROCESS.get(config, "postgres"))
        started = time.perf_counter()
        results = [noop.delay() for _ in range(E2E_TASKS)]
        enqueued = time.perf_counter()
        _wait_all(results)
        finished = time.perf_counter()
        spent = clock.spent_ms_per(E2E_TASKS)
        out["enqueue_per_s"] = E2E_TASKS / (enqueued - started)
        out["e2e_per_s"] = E2E_TASKS / (finished - started)
        out.update({f"cpu_{part}_ms": ms for part, ms in spent.items()})
        out["cpu_ms"] = sum(spent.values())

        rtts, pickups = [], []
        for _ in range(RTT_TASKS):
            sent_wall, sent = time.time(), time.perf_counter()
            began = noop.delay().get(timeout=60)
            rtts.append((time.perf_counter() - sent) * 1000)
            pickups.append((began - sent_wall) * 1000)
        out.update(
            rtt_p50_ms=_pct(rtts, 0.5), rtt_p95_ms=_pct(rtts, 0.95), rtt_p99_ms=_pct(rtts, 0.99),
            pickup_p50_ms=_pct(pickups, 0.5), pickup_p99_ms=_pct(pickups, 0.99),
        )  # fmt: skip

        started = time.perf_counter()
        _wait_all([sleep10.delay() for _ in range(SCALE_TASKS)])
        out["sleep10_per_s"] = SCALE_TASKS / (time.perf_counter() - started)

        if config != "rabbitmq":  # the rpc:// backend has no chords
            started = time.perf_counter()
            joined = chord(noop.si() for _ in range(CHORD_TASKS))(count_results.s())
            assert joined.get(timeout=900) == CHORD_TASKS
            out["chord_per_s"] = CHORD_TASKS / (time.perf_counter() - started)

        started = time.perf_counter()
        group(noop.si().set(ignore_result=True) for _ in range(BULK_TASKS)).apply_async()
        out["bulk_enqueue_per_s"] = BULK_TASKS / (time.perf_counter() - started)
        _drain(app, config)

        before = max(workers.rss_mb())
        for _ in range(RSS_TASKS):
            noop.apply_async(ignore_result=True)
        _drain(app, config)
        noop.delay().get(timeout=600)
        out["rss_before_mb"] = before
        out["rss_after_mb"] = max(workers.rss_mb())
    if config in ("stock", "pgcelery"):
        out["kombu_message_rows"], out["kombu_message_bytes"] = _table_size()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
