"""Tasks for the observability tests, loaded with ``-I tests.support.observed_tasks``."""

from __future__ import annotations

import logging
import os
import time

from celery import shared_task

log = logging.getLogger(__name__)


@shared_task(name="tests.pid_after")
def pid_after(seconds: float) -> int:
    """Sleep, then return the pid of the process that ran the task."""
    time.sleep(seconds)
    return os.getpid()


@shared_task(name="tests.leak_url")
def leak_url() -> None:
    """Try every way of leaking the worker's DATABASE_URL: print, log and raise it."""
    url = os.environ["DATABASE_URL"]
    print(f"printing the url: {url}")
    log.warning("logging the url: %s", url, extra={"url": url})
    raise RuntimeError(f"could not reach {url}")
