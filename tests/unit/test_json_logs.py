from __future__ import annotations

import json
import logging
import uuid

from celery import Celery

from pgcelery.observability import redaction
from pgcelery.observability.logging import JsonLogFormatter, set_hostname


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("pgcelery.test", logging.INFO, __file__, 1, message, None, None)
    record.created = 1_790_000_000.25
    record.__dict__.update(extra)
    return record


def test_one_json_object_with_the_documented_fields() -> None:
    set_hostname("celery@host-1")
    line = JsonLogFormatter().format(_record("pgcelery.test.event", queue="default"))
    assert "\n" not in line
    assert json.loads(line) == {
        "timestamp": "2026-09-21T14:13:20.250+00:00",
        "level": "INFO",
        "logger": "pgcelery.test",
        "message": "pgcelery.test.event",
        "queue": "default",
        "hostname": "celery@host-1",
    }


def test_task_fields_come_from_the_running_task() -> None:
    app = Celery("json-logs", set_as_current=False)
    seen: list[dict[str, str]] = []

    @app.task(name="tests.log_line", bind=True)
    def log_line(self: object) -> None:
        seen.append(json.loads(JsonLogFormatter().format(_record("inside"))))

    log_line.apply(task_id="t-123", headers={"tenant_id": "tenant-9"})
    assert seen[0]["task_id"] == "t-123"
    assert seen[0]["task_name"] == "tests.log_line"
    assert seen[0]["tenant_id"] == "tenant-9"


def test_celery_received_lines_carry_the_task_from_their_data() -> None:
    data = {"id": "abc", "name": "tests.add"}
    line = json.loads(JsonLogFormatter().format(_record("Task received", data=data)))
    assert (line["task_id"], line["task_name"]) == ("abc", "tests.add")


def test_json_lines_never_carry_the_password() -> None:
    password = f'q{uuid.uuid4().hex}"\\'
    redaction.register_url(f"postgresql://u:{password}@h/db")
    record = _record(f"connecting with {password}", dsn=password)
    line = JsonLogFormatter().format(record)
    assert password not in line
    assert json.dumps(password)[1:-1] not in line
    assert json.loads(line)["dsn"] == "***"
