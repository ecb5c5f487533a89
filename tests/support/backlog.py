"""A broker backlog with tenants and limits, made through a real app and channel.

Queue ``celery``: three ``tests.limited`` (concurrency limit 1) of which one is claimed, so two
wait on the limit; three ``tests.rated`` (one start an hour) of which one is claimed, so two
wait on the rate; two ``tests.roomy`` (concurrency limit 5, nothing held): pending, not
waiting. Queue ``tenants``: tenant A has 3 ready messages, tenant B 2, global tasks 1.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from celery import Celery

from pgcelery import tenant_context

TENANT_QUEUE = "tenants"


@dataclass(frozen=True)
class Backlog:
    tenant_a: str
    tenant_b: str
    #: Hands the two claimed messages back to the queue, as a worker does with a task it
    #: never ran: the concurrency key's slot is free again.
    release: Callable[[], None]


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def limited_tasks(app: Celery) -> None:
    """Register the three limited tasks on ``app`` (the sending app reads their limits)."""
    app.task(name="tests.limited", concurrency_limit=1)(_noop)
    app.task(name="tests.rated", global_rate_limit="1/h")(_noop)
    app.task(name="tests.roomy", concurrency_limit=5)(_noop)


def _claim_one(channel: Any, queue: str) -> str:
    """Claim one message through the channel's own claim; its delivery tag."""
    claimed = channel._get(queue)
    tag: str = claimed["properties"]["delivery_tag"]
    return tag


@contextmanager
def backlog(app: Celery) -> Iterator[Backlog]:
    """Make the backlog; the claimed messages stay leased until the block ends."""
    limited_tasks(app)
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for _ in range(3):
            app.send_task("tests.limited")
        held = [_claim_one(channel, "celery")]  # holds the key's only slot
        for _ in range(3):
            app.send_task("tests.rated")
        held.append(_claim_one(channel, "celery"))  # the next start is an hour away
        made = Backlog(str(uuid.uuid4()), str(uuid.uuid4()), lambda: channel._release(held))
        for _ in range(2):
            app.send_task("tests.roomy")
        for tenant, count in ((made.tenant_a, 3), (made.tenant_b, 2)):
            with tenant_context(tenant):
                for _ in range(count):
                    app.send_task("tests.add", (1, 1), queue=TENANT_QUEUE)
        app.send_task("tests.add", (1, 1), queue=TENANT_QUEUE)
        yield made


def many_tenants(app: Celery, count: int) -> list[str]:
    """``count`` tenants with 1, 2, … ready messages in the tenant queue; their ids by size."""
    tenants = [str(uuid.uuid4()) for _ in range(count)]
    for size, tenant in enumerate(tenants, start=1):
        with tenant_context(tenant):
            for _ in range(size):
                app.send_task("tests.add", (1, 1), queue=TENANT_QUEUE)
    return tenants
