"""Count Celery's task events into the metrics, in whichever worker process they happen.

On a Postgres broker there are no worker events for celery-exporter to count, so the worker
counts its own: ``task_received`` and ``task_rejected`` fire in the worker's main process, the
``task_*run``/``success``/``failure``/``retry`` signals in the process that runs the task (a
prefork child). Multiprocess files make one scrape see the sum.

Nothing is counted until :func:`activate` runs in a worker with metrics enabled, so a web
process that only sends tasks never touches metric files.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from celery import current_app, signals

from pgcelery.exceptions import ForgedMessage
from pgcelery.observability.metrics import task_metrics

_STATE: dict[str, Any] = {"enabled": False, "hostname": ""}
# task id -> monotonic start, for the runtime histogram (only tasks running in this process).
_STARTED: dict[str, float] = {}
_POOL_LOCK = threading.Lock()
_POOL_IN_USE = {"pid": 0, "count": 0}
_POOL_EVENTS = {"listening": False}
UNKNOWN_TASK = "unregistered"


def activate(hostname: str) -> None:
    """Start counting in this process (and the children it forks) for worker ``hostname``."""
    _STATE["enabled"] = True
    _STATE["hostname"] = hostname
    _STARTED.clear()
    _reset_pool_count()
    _count_pool_use()


def deactivate() -> None:
    _STATE["enabled"] = False


def _queue_of(request: Any) -> str:
    info = getattr(request, "delivery_info", None) or {}
    return str(info.get("routing_key") or info.get("queue") or "") if isinstance(info, dict) else ""


def _labels(name: str | None, request: Any) -> dict[str, str]:
    return {
        "name": str(name or UNKNOWN_TASK),
        "hostname": str(_STATE["hostname"]),
        "queue_name": _queue_of(request),
    }


def _task_name(sender: Any) -> str | None:
    return getattr(sender, "name", None)


def _on_publish(sender: Any = None, routing_key: str | None = None, **_: Any) -> None:
    if _STATE["enabled"]:
        name = sender if isinstance(sender, str) else _task_name(sender)
        labels = _labels(name, None)
        labels["queue_name"] = str(routing_key or "")
        task_metrics().sent.labels(**labels).inc()


def _on_received(request: Any = None, **_: Any) -> None:
    if _STATE["enabled"] and request is not None:
        task_metrics().received.labels(**_labels(request.name, request)).inc()


def _on_rejected(message: Any = None, **_: Any) -> None:
    if not _STATE["enabled"]:
        return
    headers = getattr(message, "headers", None) or {}
    name = headers.get("task") if isinstance(headers, dict) else None
    # A rejected message may name any task: only registered names are bounded.
    if name not in current_app.tasks:
        name = UNKNOWN_TASK
    info = getattr(message, "delivery_info", None)
    task_metrics().rejected.labels(**_labels(name, _Delivery(info))).inc()


class _Delivery:
    def __init__(self, delivery_info: Any) -> None:
        self.delivery_info = delivery_info


def _on_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if _STATE["enabled"] and task is not None:
        if task_id:
            _STARTED[task_id] = time.monotonic()
        task_metrics().started.labels(**_labels(task.name, task.request)).inc()


def _on_postrun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    started = _STARTED.pop(task_id, None) if task_id else None
    if _STATE["enabled"] and task is not None and started is not None:
        labels = _labels(task.name, task.request)
        task_metrics().runtime.labels(**labels).observe(time.monotonic() - started)


def _on_success(sender: Any = None, **_: Any) -> None:
    if _STATE["enabled"] and sender is not None:
        task_metrics().succeeded.labels(**_labels(sender.name, sender.request)).inc()


def _on_failure(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    if _STATE["enabled"] and sender is not None:
        labels = _labels(sender.name, sender.request)
        exception_name = type(exception).__name__ if exception is not None else ""
        task_metrics().failed.labels(**labels, exception=exception_name).inc()
        if isinstance(exception, ForgedMessage):
            task_metrics().forged.labels(sender.name).inc()


def _on_retry(sender: Any = None, request: Any = None, **_: Any) -> None:
    if _STATE["enabled"] and sender is not None:
        task_metrics().retried.labels(**_labels(sender.name, request)).inc()


def _on_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    if _STATE["enabled"]:
        task_metrics().revoked.labels(**_labels(_task_name(sender), request)).inc()


# -- database pool connections ----------------------------------------------------------------


def _reset_pool_count() -> None:
    with _POOL_LOCK:
        _POOL_IN_USE["pid"] = os.getpid()
        _POOL_IN_USE["count"] = 0


def _pool_delta(delta: int) -> None:
    if not _STATE["enabled"]:
        return
    with _POOL_LOCK:
        if _POOL_IN_USE["pid"] != os.getpid():  # forked: the parent's checkouts are not ours
            _POOL_IN_USE["pid"] = os.getpid()
            _POOL_IN_USE["count"] = 0
        _POOL_IN_USE["count"] = max(0, _POOL_IN_USE["count"] + delta)
        count = _POOL_IN_USE["count"]
    task_metrics().db_connections_in_use.labels(hostname=str(_STATE["hostname"])).set(count)


def _count_pool_use(**_: Any) -> None:
    """Count pgcelery.db's pool checkouts, once SQLAlchemy is loaded (SQLAlchemy's class-wide
    pool events: every engine's pool, made before or after). A worker whose tasks never use
    pgcelery.db never loads SQLAlchemy, so this must not load it either: called again before
    each task, it starts listening from the first task after one loaded it (by importing a
    module that uses pgcelery.db); that task's own first checkouts can go uncounted."""
    if _POOL_EVENTS["listening"] or not _STATE["enabled"] or "sqlalchemy" not in sys.modules:
        return
    import sqlalchemy as sa

    with _POOL_LOCK:
        if not sa.event.contains(sa.pool.Pool, "checkout", _on_checkout):
            sa.event.listen(sa.pool.Pool, "checkout", _on_checkout)
            sa.event.listen(sa.pool.Pool, "checkin", _on_checkin)
        _POOL_EVENTS["listening"] = True


def _on_checkout(*_: Any) -> None:
    _pool_delta(1)


def _on_checkin(*_: Any) -> None:
    _pool_delta(-1)


_HANDLERS = (
    (signals.after_task_publish, _on_publish),
    (signals.task_received, _on_received),
    (signals.task_rejected, _on_rejected),
    (signals.task_prerun, _count_pool_use),
    (signals.task_prerun, _on_prerun),
    (signals.task_postrun, _on_postrun),
    (signals.task_success, _on_success),
    (signals.task_failure, _on_failure),
    (signals.task_retry, _on_retry),
    (signals.task_revoked, _on_revoked),
)


def install() -> None:
    """Connect the counters to Celery's signals (idempotent; inert until :func:`activate`)."""
    for signal, handler in _HANDLERS:
        signal.connect(handler, weak=False, dispatch_uid=f"{__name__}.{handler.__name__}")
