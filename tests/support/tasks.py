"""Tasks the tests run on real workers (imported by in-process and subprocess workers)."""

from __future__ import annotations

import os
import time
from typing import Any

from celery import shared_task


@shared_task(name="tests.add")
def add(x: int, y: int) -> int:
    return x + y


@shared_task(name="tests.sleep")
def sleep(seconds: float, marker: str | None = None) -> float:
    time.sleep(seconds)
    return seconds


@shared_task(name="tests.fail")
def fail(message: str) -> None:
    raise RuntimeError(message)


@shared_task(name="tests.pid")
def pid() -> int:
    return os.getpid()


@shared_task(name="tests.echo")
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}
