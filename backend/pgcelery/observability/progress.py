"""Task progress: a running task reports how far it is; callers read it from ``AsyncResult``.

In the task (``bind=True``)::

    report_progress(self, done, total, stage="resizing")

The result becomes state ``PROGRESS`` with ``info == {"current": done, "total": total,
"stage": "resizing"}`` until the task finishes and the state becomes ``SUCCESS``/``FAILURE``.
Callers poll ``AsyncResult.state``/``.info`` (or :func:`progress_of`): progress updates are plain
result rows, and the result table's NOTIFY fires only for finished tasks, so nothing is woken
per update and a task may report as often as it likes within reason (each report is one upsert).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Task
from celery.result import AsyncResult

#: The custom state a task is in between its first report and its end.
PROGRESS = "PROGRESS"


@dataclass(frozen=True)
class Progress:
    """How far a running task is, as it last reported."""

    current: float
    total: float
    meta: dict[str, Any]

    @property
    def fraction(self) -> float:
        """``current / total`` clamped to 0..1 (0 when ``total`` is 0)."""
        if self.total <= 0:
            return 0.0
        return min(max(self.current / self.total, 0.0), 1.0)


def report_progress(task: Task, current: float, total: float, **meta: Any) -> dict[str, Any]:
    """Store state ``PROGRESS`` with ``{"current", "total", **meta}`` for the running task.

    ``meta`` must be JSON-serialisable (results are stored as JSON). Called outside a worker
    (a plain function call, no task id) it stores nothing and returns what it would store.
    """
    if total < 0 or current < 0:
        raise ValueError(
            f"progress needs current >= 0 and total >= 0, got current={current}, total={total}"
        )
    info = {"current": current, "total": total, **meta}
    if task.request.id is not None and not task.request.is_eager:
        task.update_state(state=PROGRESS, meta=info)
    return info


def progress_of(result: AsyncResult) -> Progress | None:
    """The last progress ``result``'s task reported, or ``None`` when it is not in PROGRESS."""
    if result.state != PROGRESS:
        return None
    info = result.info if isinstance(result.info, dict) else {}
    extra = {k: v for k, v in info.items() if k not in ("current", "total")}
    return Progress(current=info.get("current", 0), total=info.get("total", 0), meta=extra)
