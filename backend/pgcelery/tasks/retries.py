"""Retry named exception types with exponential backoff, full jitter and a cap.

This is Celery's own automatic retry (``autoretry_for``, ``retry_backoff``,
``retry_backoff_max``, ``retry_jitter``, ``max_retries``), validated and given one name, so
every task in a service retries the same way::

    from celery import shared_task
    from pgcelery.tasks.retries import retry_policy

    @shared_task(name="billing.charge", **retry_policy(TimeoutError, ConnectionError))
    def charge(invoice_id: str) -> None: ...

or, for a family of tasks, as a base class::

    class NetworkTask(RetryingTask):
        autoretry_for = (TimeoutError, ConnectionError)

    @shared_task(name="billing.charge", base=NetworkTask)
    def charge(invoice_id: str) -> None: ...

Before retry *n* (0-based) the task waits a whole number of seconds drawn uniformly from
``0 .. min(backoff_max, backoff * 2**n)`` (no jitter: exactly that upper bound). After
``max_retries`` retries the last exception is raised and the task ends in FAILURE. Each retry is
a new broker message, so it survives a worker restart; the attempt number is
``self.request.retries`` in a bound task.

Only exceptions that are safe to repeat belong here: the task body runs again from the top.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from pgcelery.exceptions import ConfigurationError

#: Defaults: 1, 2, 4, 8, 16 s upper bounds — about half a minute of retrying in total.
DEFAULT_MAX_RETRIES = 5
DEFAULT_BACKOFF = 1
DEFAULT_BACKOFF_MAX = 600


def retry_policy(
    *exceptions: type[BaseException],
    max_retries: int | None = DEFAULT_MAX_RETRIES,
    backoff: int = DEFAULT_BACKOFF,
    backoff_max: int = DEFAULT_BACKOFF_MAX,
    jitter: bool = True,
    dont_retry: tuple[type[BaseException], ...] = (),
) -> dict[str, Any]:
    """Celery task options that retry ``exceptions`` with capped exponential backoff.

    ``backoff`` is the first delay's upper bound in whole seconds (Celery schedules retries in
    whole seconds), doubled on each retry up to ``backoff_max``. ``max_retries=None`` retries
    forever. ``dont_retry`` names subclasses of ``exceptions`` that must fail at once. Splat the
    result into ``@shared_task(**retry_policy(...))`` or ``@app.task(**retry_policy(...))``.
    """
    if not exceptions:
        raise ConfigurationError("retry_policy() needs at least one exception type to retry")
    for kind in (*exceptions, *dont_retry):
        if not (isinstance(kind, type) and issubclass(kind, BaseException)):
            raise ConfigurationError(f"retry_policy(): {kind!r} is not an exception type")
    if max_retries is not None and max_retries < 0:
        raise ConfigurationError("retry_policy(): max_retries must be ≥ 0, or None for forever")
    if isinstance(backoff, bool) or not isinstance(backoff, int) or backoff < 1:
        raise ConfigurationError("retry_policy(): backoff must be a whole number of seconds ≥ 1")
    if isinstance(backoff_max, bool) or not isinstance(backoff_max, int) or backoff_max < backoff:
        raise ConfigurationError("retry_policy(): backoff_max must be whole seconds ≥ backoff")
    return {
        "autoretry_for": tuple(exceptions),
        "dont_autoretry_for": tuple(dont_retry),
        "max_retries": max_retries,
        "retry_backoff": backoff,
        "retry_backoff_max": backoff_max,
        "retry_jitter": jitter,
    }


class RetryingTask(Task):
    """A task base whose subclasses name ``autoretry_for`` and inherit pgcelery's backoff.

    Celery reads these attributes when the task is bound, so a subclass only sets
    ``autoretry_for`` (and overrides any other value it wants).
    """

    autoretry_for: tuple[type[BaseException], ...] = ()
    max_retries: int | None = DEFAULT_MAX_RETRIES
    retry_backoff: int = DEFAULT_BACKOFF
    retry_backoff_max: int = DEFAULT_BACKOFF_MAX
    retry_jitter: bool = True
