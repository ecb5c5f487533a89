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
    text = render(header, results)
    print(text)
    (ROOT / "bench" / "RESULTS.md").write_text(text)


if __name__ == "__main__":
    main()
