"""Unique tasks, the producer's side: ``apply_async(unique_key=...)`` and the task options.

``unique_key``, ``unique_for`` and ``unique_mode`` are read from the send's options first, then
from the task (``@app.task(unique_key=lambda *args, **kwargs: ...)``; a callable gets the
task's args and kwargs and may return None for "not unique"). A send with a key publishes under
:func:`pgcelery.broker.unique.sending`; when the broker reports the key taken, the caller gets
an ``AsyncResult`` of the first task instead of the one it would have sent. A send without a key
takes the ordinary path: three dictionary look-ups, no statement.

On the worker, :func:`install` ends the ``unique_for`` hold of a task that ran, as it finishes
and before its ack (``task_postrun``); a task sent without ``unique_for`` costs one attribute
look-up there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import psycopg
from celery import states
from celery.signals import task_postrun

from pgcelery.broker.unique import HOLD_HEADER, MODES, UniqueSend, finish_hold, sending
from pgcelery.exceptions import InvalidUniqueOption
from pgcelery.schema.names import Names

log = logging.getLogger(__name__)

OPTIONS = ("unique_key", "unique_for", "unique_mode")


def _task_option(task: Any, name: str) -> Any:
    # On the class: a function given to ``@app.task(unique_key=...)`` is a class attribute, and
    # read from an instance it would be bound as a method.
    return None if task is None else getattr(type(task), name, None)


def unique_request(
    name: str,
    task: Any,
    args: Any,
    kwargs: Any,
    options: dict[str, Any],
) -> UniqueSend | None:
    """The unique request for this send (popping the options Celery must not see), or None."""
    key = options.pop("unique_key", None)
    unique_for = options.pop("unique_for", None)
    mode = options.pop("unique_mode", None)
    if key is None:
        key = _task_option(task, "unique_key")
        if callable(key):
            key = _call(key, args, kwargs)
    if key is None:
        return None
    if unique_for is None:
        unique_for = _task_option(task, "unique_for")
    if mode is None:
        mode = _task_option(task, "unique_mode") or "keep"
    return UniqueSend(name, _valid_key(key), _valid_for(unique_for), _valid_mode(mode))


def _call(key: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    return key(*(args or ()), **(kwargs or {}))


def _valid_key(key: Any) -> str:
    if isinstance(key, int | float) and not isinstance(key, bool):
        key = str(key)
    if not isinstance(key, str) or not key:
        raise InvalidUniqueOption(f"unique_key must be a non-empty string, got {key!r}")
    return key


def _valid_for(unique_for: Any) -> float | None:
    if unique_for is None:
        return None
    if (
        isinstance(unique_for, bool)
        or not isinstance(unique_for, int | float)
        or not math.isfinite(unique_for)
        or unique_for < 0
    ):
        raise InvalidUniqueOption(f"unique_for must be seconds >= 0, got {unique_for!r}")
    return float(unique_for)


def _valid_mode(mode: Any) -> Any:
    if mode not in MODES:
        raise InvalidUniqueOption(f'unique_mode must be "keep" or "replace", got {mode!r}')
    return mode


def send_unique(
    send: Callable[..., Any],
    result_cls: Callable[[str], Any],
    request: UniqueSend,
    name: str,
    args: Any,
    kwargs: Any,
    options: dict[str, Any],
) -> Any:
    """Send through ``send`` (Celery's ``send_task``) with ``request`` in force; the first
    task's result when the key was taken."""
    with sending(request):
        result = send(name, args, kwargs, **options)
    if request.existing_id is not None:
        return result_cls(request.existing_id)
    return result


def _on_postrun(
    sender: Any = None, task_id: str | None = None, state: str | None = None, **_: Any
) -> None:
    hold = getattr(getattr(sender, "request", None), HOLD_HEADER, None)
    if hold is None or state == states.RETRY or task_id is None:
        return
    try:
        name, key, seconds = hold
        settings = getattr(sender.app, "pgcelery_settings", None)
        names = Names(getattr(settings, "schema_name", "public"))
        with sender.backend._pool().connection() as conn:
            finish_hold(conn, names, str(name), str(key), task_id, float(seconds))
    except (psycopg.Error, ValueError, TypeError, AttributeError) as exc:
        # The key is then free as soon as the message is acked: logged, never raised.
        log.warning(
            "pgcelery.unique.hold_failed", extra={"task_id": task_id, "error": type(exc).__name__}
        )


def install() -> None:
    """Connect the worker's side of ``unique_for`` (idempotent)."""
    task_postrun.connect(_on_postrun, weak=False, dispatch_uid="pgcelery.tasks.unique")
