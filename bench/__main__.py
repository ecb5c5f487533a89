"""``make bench``: stock kombu sqla + db backend, pgcelery, Redis and RabbitMQ, side by side.

Every configuration runs in fresh processes and a fresh database, with 1 and 2 solo workers and
one prefork worker (-c 2); ``BENCH_ROUNDS`` rounds alternate the order of the columns, and the
medians and their ratios are printed and written to bench/RESULTS.md with the machine
description. ``BENCH_CONFIGS=pgcelery,redis`` measures only those columns, ``BENCH_SETUPS=1,0`` only
those worker setups (1, 2: solo workers; 0: the prefork worker).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench import environment
from bench.report import render

ROOT = Path(__file__).resolve().parents[1]

#: An event consumer like Flower's, for the "events with a receiver" row: counts every event.
EVENT_SINK = """
import sys
from bench.apps import app
seen = [0]
def count(event):
    seen[0] += 1
with app.connection_for_read() as conn:
    receiver = app.events.Receiver(conn, handlers={"*": count})
    print("ready", flush=True)
    receiver.capture(limit=None, timeout=None, wakeup=False)
"""


def _run_module(module: str, env: dict[str, str], what: str) -> Any:
    """Run ``python -m module`` in fresh processes; its last output line is JSON."""
    full = {**os.environ, **env, "PYTHONPATH": f"{ROOT}:{ROOT / 'backend'}"}
    done = subprocess.run(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"bench {what} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(config: str, workers: int, env: dict[str, str]) -> dict[str, Any]:
    print(f"  {config}, {workers} worker(s) ...", flush=True)
    full = {**env, "BENCH_CONFIG": config, "BENCH_WORKERS": str(workers)}
    result: dict[str, Any] = _run_module("bench.measure", full, f"{config}/{workers}")
    return result


#: Event runs alternate, several rounds, and report medians: the budget (10%) is smaller than
#: the run-to-run noise of a single measurement on a small machine.
EVENT_ROUNDS = int(os.environ.get("BENCH_EVENT_ROUNDS", "2"))
EVENT_RUN_ENV = {"BENCH_RSS_TASKS": "0"}


def _event_variant(
    admin: str, config: str, env: dict[str, str], sink: bool, redis_url: str | None
) -> dict[str, Any]:
    from pgcelery.schema import migrations

    url = environment.fresh_database(admin)
    receiver = None
    full = {**EVENT_RUN_ENV, **env, "DATABASE_URL": url}
    if config == "redis":
        assert redis_url is not None
        import redis

        redis.Redis.from_url(redis_url).flushdb()
        full["BENCH_REDIS_URL"] = redis_url
    try:
        if config == "pgcelery":
            migrations.upgrade(url)
        if sink:
            receiver = subprocess.Popen(
                [sys.executable, "-c", EVENT_SINK],
                cwd=ROOT,
                env={
                    **os.environ,
                    **full,
                    "BENCH_CONFIG": config,
                    "PYTHONPATH": f"{ROOT}:{ROOT / 'backend'}",
                },
                stdout=subprocess.PIPE,
                text=True,
            )
            assert receiver.stdout is not None
            receiver.stdout.readline()
            full["BENCH_RECEIVER_PID"] = str(receiver.pid)
        return run(config, 1, full)
    finally:
        if receiver is not None:
            receiver.terminate()
            receiver.wait(30)
        environment.drop_database(admin, url)


def run_events(admin: str, redis_url: str | None) -> list[dict[str, Any]]:
    """Without worker events, with them, and with them and a receiver attached: pgcelery,
    and Redis for comparison when it is there. Medians of EVENT_ROUNDS alternating runs."""
    variants = [
        ("pgcelery", "events-off", {}, False),
        ("pgcelery", "events", {"BENCH_EVENTS": "1"}, False),
        ("pgcelery", "events+receiver", {"BENCH_EVENTS": "1"}, True),
    ]
    if redis_url is not None:
        variants += [
            ("redis", "events-off", {}, False),
            ("redis", "events+receiver", {"BENCH_EVENTS": "1"}, True),
        ]
    samples: dict[str, list[dict[str, Any]]] = {}
    for _ in range(EVENT_ROUNDS):
        for config, label, env, sink in variants:
            found = _event_variant(admin, config, env, sink, redis_url)
            samples.setdefault(f"{config}+{label}", []).append(found)
    medians = []
    for label, runs in samples.items():
        keys = [k for k, v in runs[0].items() if isinstance(v, int | float)]
        merged: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in keys}
        merged.update(config=label, workers=1, rounds=len(runs))
        # The same round's runs, one after the other, share the host's mood: their quotient
        # is steadier than a quotient of medians.
        off = samples[label.split("+", 1)[0] + "+events-off"]
        pairs = zip(runs, off, strict=True)
        merged["paired_e2e"] = [r["e2e_per_s"] / o["e2e_per_s"] for r, o in pairs]
        medians.append(merged)
    return medians


def run_event_phases(admin: str, redis_url: str | None) -> dict[str, Any]:
    """bench.events for pgcelery and, when it is there, Redis: {config: {phase: [rounds]}}."""
    from pgcelery.schema import migrations

    found: dict[str, Any] = {}
    for config in ("pgcelery", "redis"):
        env = {"BENCH_CONFIG": config}
        url = None
        if config == "redis":
            if redis_url is None:
                continue
            import redis

            redis.Redis.from_url(redis_url).flushdb()
            env["BENCH_REDIS_URL"] = redis_url
        else:
            url = environment.fresh_database(admin)
            migrations.upgrade(url)
            env["DATABASE_URL"] = url
        print(f"  events in one worker, receiver attached and not: {config} ...", flush=True)
        try:
            found[config] = _run_module("bench.events", env, f"events/{config}")
        finally:
            if url is not None:
                environment.drop_database(admin, url)
    return found


#: What each round measures, in this order on odd rounds and reversed on even ones.
CONFIGS = ("stock", "pgcelery", "fair-off", "redis", "rabbitmq")
#: 1 and 2 solo workers, and one prefork worker with two children (bench.measure.PREFORK).
WORKER_SETUPS = tuple(
    int(n) for n in os.environ.get("BENCH_SETUPS", "1,2,0").split(",") if n.strip()
)


def _one(config: str, workers: int, admin: str, servers: dict[str, str | None]) -> Any:
    from pgcelery.schema import migrations

    if config == "redis":
        import redis

        redis.Redis.from_url(str(servers["redis"])).flushdb()
        return run(config, workers, {"BENCH_REDIS_URL": str(servers["redis"])})
    if config == "rabbitmq":
        return run(config, workers, {"BENCH_AMQP_URL": str(servers["rabbitmq"])})
    url = environment.fresh_database(admin)
    try:
        if config == "stock":
            return run(config, workers, {"DATABASE_URL": url})
        migrations.upgrade(url)
        # The claim without the tenant rotation: what fair share costs (issue 18's budget).
        fair = "false" if config == "fair-off" else "true"
        return run(config, workers, {"DATABASE_URL": url, "PGCELERY_FAIR_TENANTS": fair})
    finally:
        environment.drop_database(admin, url)


def main() -> None:
    rounds = int(os.environ.get("BENCH_ROUNDS", "1"))
    wanted = os.environ.get("BENCH_CONFIGS", ",".join(CONFIGS)).split(",")
    results: list[dict[str, Any]] = []
    with (
        environment.postgres_server() as admin,
        environment.redis_server() as redis_url,
        environment.rabbitmq_server() as amqp_url,
    ):
        servers = {"redis": redis_url, "rabbitmq": amqp_url}
        configs = [c for c in CONFIGS if c in wanted and servers.get(c, "db") is not None]
        header = {
            "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": environment.machine(),
            "postgres": environment.server_version(admin),
            "versions": f"celery {version('celery')}, kombu {version('kombu')}, "
            f"psycopg {version('psycopg')}, SQLAlchemy {version('sqlalchemy')}",
            "redis": redis_url is not None,
            "rabbitmq": amqp_url is not None,
            "rounds": rounds,
        }
        print(f"pgcelery benchmark on {header['machine']}; {header['postgres']}", flush=True)
        for n in range(rounds):
            print(f" round {n + 1} of {rounds}", flush=True)
            # Alternate the order, so a slow phase of the host does not always hit one column.
            order = configs if n % 2 == 0 else list(reversed(configs))
            for workers in WORKER_SETUPS:
                for config in order:
                    found = _one(config, workers, admin, servers)
                    found["round"] = n
                    results.append(found)
        if os.environ.get("BENCH_SKIP_EVENTS") != "1":
            phases = run_event_phases(admin, redis_url)
            print("  events: pgcelery without and with worker events ...", flush=True)
            results += run_events(admin, redis_url)
        else:
            phases = {}
    text = render(header, results, phases)
    print(text)
    (ROOT / "bench" / "RESULTS.md").write_text(text)


if __name__ == "__main__":
    main()
