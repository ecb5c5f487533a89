"""A producer process for the unique-task tests: 20 threads send one unique key at once.

``python -m tests.support.unique_sender DATABASE_URL KEY START_AT THREADS`` waits until the
wall clock reaches START_AT (so every process starts together), sends ``tests.record_run`` with
``unique_key=KEY`` from THREADS threads at once and prints the task ids they got, one a line.
"""

from __future__ import annotations

import sys
import threading
import time

from pgcelery import create_app
from pgcelery.settings import Settings


def main() -> None:
    url, key, start_at, threads = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    app = create_app(
        "unique-sender",
        include=["tests.support.broker_tasks"],
        settings=Settings(DATABASE_URL=url, PGCELERY_METRICS_ENABLED=False),
    )
    # From the app, not the shared_task proxy: the current app is per thread in Celery, and a new
    # thread's is the default one.
    from tests.support import broker_tasks  # noqa: F401  (registers the shared tasks)

    record_run = app.tasks["tests.record_run"]
    record_run.delay("warm-up-no-key").forget()  # connect before the start line
    barrier = threading.Barrier(threads)
    ids: list[str] = []
    lock = threading.Lock()

    def send() -> None:
        barrier.wait()
        result = record_run.apply_async(("unique",), unique_key=key)
        with lock:
            ids.append(result.id)

    workers = [threading.Thread(target=send) for _ in range(threads)]
    time.sleep(max(0.0, start_at - time.time()))
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    print("\n".join(ids), flush=True)


if __name__ == "__main__":
    main()
