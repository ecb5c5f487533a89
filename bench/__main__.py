"""``make bench``: stock kombu sqla + db backend, pgcelery, and Redis, side by side.

Every configuration runs in fresh processes and a fresh database; the figures and their
ratios are printed and written to bench/RESULTS.md with the machine description.
"""

from __future__ import annotations

import json
import os
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


def run(config: str, workers: int, env: dict[str, str]) -> dict[str, Any]:
    print(f"  {config}, {workers} worker(s) ...", flush=True)
    full = {**os.environ, **env, "BENCH_CONFIG": config, "BENCH_WORKERS": str(workers)}
    full["PYTHONPATH"] = f"{ROOT}:{ROOT / 'backend'}"
    done = subprocess.run(
        [sys.executable, "-m", "bench.measure"],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"bench {config}/{workers} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_events(admin: str) -> list[dict[str, Any]]:
    """pgcelery with worker_send_task_events off, on, and on with an event receiver attached."""
    from pgcelery import migrations

    found = []
    for label, env, sink in (
        ("pgcelery+events-off", {}, False),
        ("pgcelery+events", {"BENCH_EVENTS": "1"}, False),
        ("pgcelery+events+receiver", {"BENCH_EVENTS": "1"}, True),
    ):
        url = environment.fresh_database(admin)
        receiver = None
        try:
            migrations.upgrade(url)
            if sink:
                receiver = subprocess.Popen(
                    [sys.executable, "-c", EVENT_SINK],
                    cwd=ROOT,
                    env={
                        **os.environ,
                        "BENCH_CONFIG": "pgcelery",
                        "DATABASE_URL": url,
                        "PYTHONPATH": f"{ROOT}:{ROOT / 'backend'}",
                    },
                    stdout=subprocess.PIPE,
                    text=True,
                )
                assert receiver.stdout is not None
                receiver.stdout.readline()
            result = run("pgcelery", 1, {"DATABASE_URL": url, **env})
            result["config"] = label
            found.append(result)
        finally:
            if receiver is not None:
                receiver.terminate()
                receiver.wait(30)
            environment.drop_database(admin, url)
    return found


def main() -> None:
    from pgcelery import migrations

    results: list[dict[str, Any]] = []
    with environment.postgres_server() as admin, environment.redis_server() as redis_url:
        header = {
            "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": environment.machine(),
            "postgres": environment.server_version(admin),
            "versions": f"celery {version('celery')}, kombu {version('kombu')}, "
            f"psycopg {version('psycopg')}, SQLAlchemy {version('sqlalchemy')}",
            "redis": redis_url is not None,
        }
        print(f"pgcelery benchmark on {header['machine']}; {header['postgres']}", flush=True)
        for config in ("stock", "pgcelery", "redis"):
            for workers in (1, 2):
                if config == "redis":
                    if redis_url is None:
                        continue
                    import redis

                    redis.Redis.from_url(redis_url).flushdb()
                    results.append(run(config, workers, {"BENCH_REDIS_URL": redis_url}))
                    continue
                url = environment.fresh_database(admin)
                try:
                    if config == "pgcelery":
                        migrations.upgrade(url)
                    results.append(run(config, workers, {"DATABASE_URL": url}))
                finally:
                    environment.drop_database(admin, url)
        if os.environ.get("BENCH_SKIP_EVENTS") != "1":
            print("  events: pgcelery without and with worker events ...", flush=True)
            results += run_events(admin)
    text = render(header, results)
    print(text)
    (ROOT / "bench" / "RESULTS.md").write_text(text)


if __name__ == "__main__":
    main()
