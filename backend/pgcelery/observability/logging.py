"""JSON logs for the worker and its tasks: one object per line, Celery's own lines included.

Each line has ``timestamp``, ``level``, ``logger`` and ``message``, then ``task_name``,
``task_id``, ``tenant_id``, ``correlation_id`` and ``hostname`` whenever they are known, then
any ``extra`` fields. ``PGCELERY_LOG_FORMAT=text`` keeps Celery's human format. Both formats go
through the redaction filter, so no line carries the ``DATABASE_URL`` password.

Celery configures its handlers and then sends ``after_setup_logger`` and
``after_setup_task_logger``; the receivers here swap the formatter on those handlers, which
leaves Celery's log level, log file and stdout redirection as the operator chose them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from celery import signals
from pythonjsonlogger.json import JsonFormatter

from pgcelery.observability.redaction import install_filter, scrub, scrub_value
from pgcelery.tenancy.scope import current_correlation_id, current_tenant_id

CONTEXT_FIELDS = ("task_name", "task_id", "tenant_id", "correlation_id", "hostname")
_FORMAT = {"format": "json"}
_HOSTNAME: dict[str, str | None] = {"value": None}


def set_hostname(hostname: str | None) -> None:
    """The worker's node name, added to every line of this process and its children."""
    _HOSTNAME["value"] = hostname


def _from_scope(getter: Callable[[], str | None]) -> str | None:
    try:
        value = getter()
    except Exception:  # a missing id must never break a log line
        return None
    return None if value is None else str(value)


def _from_request(request: Any, key: str) -> str | None:
    value = getattr(request, key, None)
    if value is None:
        headers = getattr(request, "headers", None) or {}
        value = headers.get(key) if isinstance(headers, dict) else None
    return None if value is None else str(value)


def context_fields(record: logging.LogRecord) -> dict[str, str]:
    """The task and tenant ids for ``record``, from the running task or the record itself."""
    from celery._state import get_current_task

    fields: dict[str, str | None] = {
        "tenant_id": _from_scope(current_tenant_id),
        "correlation_id": _from_scope(current_correlation_id),
        "hostname": _HOSTNAME["value"],
    }
    task = get_current_task()
    request = getattr(task, "request", None) if task is not None else None
    if request is not None and getattr(request, "id", None):
        fields["task_id"] = str(request.id)
        fields["task_name"] = str(task.name)
        fields["tenant_id"] = fields["tenant_id"] or _from_request(request, "tenant_id")
        fields["correlation_id"] = fields["correlation_id"] or _from_request(
            request, "correlation_id"
        )
        fields["hostname"] = fields["hostname"] or getattr(request, "hostname", None)
    # Celery's "received"/"succeeded"/"raised" lines carry the task in ``extra={"data": …}``.
    data = record.__dict__.get("data")
    if isinstance(data, dict):
        fields["task_id"] = fields.get("task_id") or data.get("id")
        fields["task_name"] = fields.get("task_name") or data.get("name")
    return {key: str(value) for key in CONTEXT_FIELDS if (value := fields.get(key))}


class JsonLogFormatter(JsonFormatter):
    """python-json-logger's formatter with pgcelery's field names, context and redaction."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["timestamp"] = datetime.fromtimestamp(record.created, tz=UTC).isoformat(
            timespec="milliseconds"
        )
        super().add_fields(log_data, record, message_dict)
        for key, value in context_fields(record).items():
            if log_data.get(key) in (None, "", "???"):
                log_data[key] = value
        # Celery's TaskFormatter placeholders, when a line comes from outside a task.
        for key in ("task_name", "task_id"):
            if log_data.get(key) == "???":
                del log_data[key]

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        # Scrub before serialising: JSON escaping would hide a password from a text search.
        clean: dict[str, Any] = scrub_value(log_data)
        return clean

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def configure(log_format: str) -> None:
    """Choose ``json`` or ``text`` for the worker's logs (applied when Celery sets them up)."""
    _FORMAT["format"] = log_format


def apply(logger: logging.Logger) -> None:
    """Give every handler of ``logger`` the redaction filter and, in JSON mode, the formatter."""
    for handler in logger.handlers:
        install_filter(handler)
        if _FORMAT["format"] == "json" and not isinstance(handler.formatter, JsonLogFormatter):
            handler.setFormatter(JsonLogFormatter())


def _on_setup_logger(logger: logging.Logger | None = None, **_: Any) -> None:
    apply(logger or logging.getLogger())


def _on_worker_init(sender: Any = None, instance: Any = None, **_: Any) -> None:
    # Celery's ASCII banner is not JSON; in JSON mode the worker logs its settings instead.
    if _FORMAT["format"] == "json" and instance is not None:
        instance.quiet = True
        set_hostname(str(sender) if sender else None)


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    if _FORMAT["format"] != "json" or sender is None:
        return
    worker = getattr(sender, "controller", None)
    app = sender.app
    logging.getLogger(__name__).info(
        "pgcelery.worker.ready",
        extra={
            "pool": getattr(getattr(worker, "pool_cls", None), "__module__", None),
            "concurrency": getattr(worker, "concurrency", None),
            "queues": sorted(q.name for q in app.amqp.queues.values()),
            "broker": app.connection_for_read().as_uri(mask=True),
        },
    )


def install() -> None:
    """Hook Celery's logging setup (idempotent)."""
    signals.celeryd_init.connect(_on_worker_init, weak=False, dispatch_uid=f"{__name__}.init")
    signals.worker_ready.connect(_on_worker_ready, weak=False, dispatch_uid=f"{__name__}.ready")
    signals.after_setup_logger.connect(_on_setup_logger, weak=False, dispatch_uid=__name__)
    signals.after_setup_task_logger.connect(
        _on_setup_logger, weak=False, dispatch_uid=f"{__name__}.task"
    )
