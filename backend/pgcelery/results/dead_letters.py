"""What a dead letter does to its task: the result becomes FAILURE, and it is counted.

The broker moves a message delivered too often without an ack to ``pgcelery_dead_letter``
(:mod:`pgcelery.broker.dead_letters`); whoever waits on the task's result learns why at once,
with :class:`~pgcelery.exceptions.DeliveryLimitExceeded` naming the task, the count and the
command that replays it, instead of waiting for ever.
"""

from __future__ import annotations

import logging
from typing import Any

from pgcelery import dsn
from pgcelery.broker import dead_letters
from pgcelery.exceptions import DeliveryLimitExceeded
from pgcelery.observability.metrics import task_metrics
from pgcelery.settings import settings_of

log = logging.getLogger(__name__)


def failure_for(letter: dead_letters.DeadLetter) -> DeliveryLimitExceeded:
    if letter.reason == dead_letters.UNREADABLE:
        what = "its payload is not a JSON object"
    elif letter.reason == dead_letters.OVERSIZED:
        what = "its message is larger than PGCELERY_MAX_MESSAGE_BYTES"
    else:
        what = (
            f"it was delivered {letter.deliveries} times without finishing (last worker:"
            f" {letter.last_worker or 'unknown'}; did the task kill its worker?)"
        )
    return DeliveryLimitExceeded(
        f"Task {letter.task_name or '?'} [{letter.task_id or '?'}] was moved to the dead letters:"
        f" {what}. Inspect it with `pgcelery dead-letters list`; once fixed, run it again with"
        f" `pgcelery dead-letters replay {letter.id}`."
    )


def install(app: Any) -> None:
    """Store FAILURE for each task this app's workers dead-letter, and count it."""
    conninfo = dsn.libpq_url(settings_of(app).database_url)

    def fail(letter: dead_letters.DeadLetter) -> None:
        task_metrics().dead_letters.labels(letter.queue, letter.reason).inc()
        if letter.task_id is not None:
            app.backend.mark_as_failure(letter.task_id, failure_for(letter))

    dead_letters.on_dead_letter(conninfo, fail)
