"""A task reports progress on a real worker; the caller reads it from AsyncResult mid-task."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from celery import Celery
from celery.contrib.testing.worker import TestWorkController

from pgcelery.observability.progress import PROGRESS, Progress, progress_of, report_progress
from tests.support.waiting import wait_until


def test_caller_sees_each_step_then_success(app: Celery, worker: TestWorkController) -> None:
    gate = Path(tempfile.mkdtemp(prefix="pgcelery-progress-"))
    result = app.send_task("tests.progress_steps", args=(3, str(gate)))
    for step in (1, 2, 3):
        wait_until(
            lambda step=step: result.state == PROGRESS and result.info["current"] == step,
            timeout=60,
            what=f"progress step {step}",
        )
        assert result.info == {"current": step, "total": 3, "stage": f"step {step}"}
        assert progress_of(result) == Progress(step, 3, {"stage": f"step {step}"})
        (gate / str(step)).touch()
    assert result.get(timeout=60) == 3
    assert result.state == "SUCCESS"
    assert progress_of(result) is None


def test_fraction_is_clamped() -> None:
    assert Progress(5, 10, {}).fraction == 0.5
    assert Progress(12, 10, {}).fraction == 1.0
    assert Progress(3, 0, {}).fraction == 0.0


def test_called_outside_a_worker_stores_nothing(app: Celery) -> None:
    task = app.tasks["tests.add"]
    assert report_progress(task, 1, 2, stage="x") == {"current": 1, "total": 2, "stage": "x"}
    with pytest.raises(ValueError, match="current >= 0"):
        report_progress(task, -1, 2)
