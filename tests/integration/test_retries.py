"""pgcelery.retries on a real worker: named exceptions retried with backoff, then given up."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery import Celery, states
from celery.contrib.testing.worker import TestWorkController, start_worker

from pgcelery.exceptions import ConfigurationError
from pgcelery.tasks.retries import RetryingTask, retry_policy
from tests.support.tasks import FlakyError


def runs(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def test_task_failing_twice_then_succeeding_ends_in_success_after_three_runs(
    app: Celery, worker: TestWorkController, tmp_path: Path
) -> None:
    counter = tmp_path / "runs"
    result = app.send_task("tests.flaky", args=[str(counter), 2])
    assert result.get(timeout=60) == 3
    assert result.state == states.SUCCESS
    assert runs(counter) == 3


def test_task_that_always_fails_ends_in_failure_after_max_retries(
    app: Celery, worker: TestWorkController, tmp_path: Path
) -> None:
    counter = tmp_path / "runs"
    result = app.send_task("tests.always_flaky", args=[str(counter)])
    with pytest.raises(FlakyError, match="run 3 fails"):
        result.get(timeout=60)
    assert result.state == states.FAILURE
    assert runs(counter) == 3  # the first run and max_retries=2 retries


def test_exception_not_named_fails_at_once(
    app: Celery, worker: TestWorkController, tmp_path: Path
) -> None:
    counter = tmp_path / "runs"
    result = app.send_task("tests.flaky", args=[str(counter), 2], kwargs={"error": "value"})
    with pytest.raises(ValueError, match="run 1"):
        result.get(timeout=60)
    assert result.state == states.FAILURE
    assert runs(counter) == 1


def test_policy_maps_onto_celery_autoretry_options() -> None:
    options = retry_policy(
        TimeoutError, ConnectionError, max_retries=4, backoff=2, backoff_max=30, jitter=False
    )
    assert options == {
        "autoretry_for": (TimeoutError, ConnectionError),
        "dont_autoretry_for": (),
        "max_retries": 4,
        "retry_backoff": 2,
        "retry_backoff_max": 30,
        "retry_jitter": False,
    }


@pytest.mark.parametrize(
    ("exceptions", "options", "message"),
    [
        ((), {}, "at least one exception"),
        ((ValueError, "x"), {}, "not an exception type"),
        ((ValueError,), {"max_retries": -1}, "max_retries"),
        ((ValueError,), {"backoff": 0}, "backoff must"),
        ((ValueError,), {"backoff": 1.5}, "backoff must"),
        ((ValueError,), {"backoff": 10, "backoff_max": 5}, "backoff_max"),
    ],
)
def test_policy_refuses_invalid_values(
    exceptions: tuple[object, ...], options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        retry_policy(*exceptions, **options)  # type: ignore[arg-type]


def test_retrying_task_base_retries_its_named_exceptions(app: Celery, tmp_path: Path) -> None:
    class NetworkTask(RetryingTask):
        autoretry_for = (ConnectionError,)

    counter = tmp_path / "runs"

    @app.task(name="tests.network_base", base=NetworkTask)
    def network() -> int:
        with counter.open("a") as file:
            file.write("run\n")
        if runs(counter) == 1:
            raise ConnectionError("first run fails")
        return runs(counter)

    assert (network.retry_backoff, network.retry_jitter, network.max_retries) == (1, True, 5)
    # The worker learns its tasks when it starts: start it after defining this one.
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30):
        assert network.delay().get(timeout=60) == 2
