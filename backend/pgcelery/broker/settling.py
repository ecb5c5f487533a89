"""What a closed channel still owes: the acks and leases of tasks that run on.

A channel closes when its connection breaks, while the worker's tasks run on (Celery reconnects
with a new channel). kombu asks the old one to hand back what it holds unacked; it hands back
only what never started (:class:`~pgcelery.broker.delivery.QoS`). The messages of tasks still
running stay leased: the renewer goes on renewing them and the ack thread goes on sending, each
on a fresh connection, so a task that finishes after the reconnect is acked (fenced by its
token) instead of running a second time when its lease runs out. The last ack or release stops
both. A message handed to a prefork child that has not been seen starting is looked at again a
moment later, and given back if it still has not started.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

import psycopg

from pgcelery.broker.acks import PendingAcks
from pgcelery.broker.delivery import parse_tag, running_delivery_tags
from pgcelery.broker.leases import LeaseRenewer

log = logging.getLogger(__name__)


class SettlingChannel(Protocol):
    """What settling needs of the transport's channel (:mod:`pgcelery.broker.channel`)."""

    _acks: PendingAcks
    _renewer: LeaseRenewer | None

    def _release(self, tags: list[str], started: bool = True) -> None: ...

    def _drop_connection(self) -> None: ...


class Settling:
    def __init__(self, channel: SettlingChannel) -> None:
        self._channel = channel

    def _held(self) -> dict[int, str]:
        renewer = self._channel._renewer
        return renewer.held() if renewer is not None else {}

    def after_close(self) -> None:
        """Stop at once, unless tasks still running hold messages of this channel."""
        try:
            self._channel._acks.flush_now()
        except psycopg.Error as exc:
            # Retried by the ack thread; should the worker die first, the leases run out and
            # the messages run again: at least once, never lost.
            log.warning("pgcelery.broker.ack_flush_failed", extra={"error": type(exc).__name__})
        held = self._held()
        if held:
            log.info("pgcelery.broker.settling", extra={"count": len(held)})
            return
        self.stop()

    def forgotten(self) -> None:
        """A message of the closed channel was acked or given back: stop after the last."""
        if not self._held():
            self.stop()

    def recheck_later(self, tags: list[str], delay: float) -> None:
        """After ``delay``, give back those of ``tags`` still held whose tasks have not started
        (the pool dropped the job) instead of renewing their leases for ever."""
        timer = threading.Timer(delay, self._recheck, args=(tags,))
        timer.daemon = True
        timer.start()

    def _recheck(self, tags: list[str]) -> None:
        started, _ = running_delivery_tags()
        held = self._held()
        stale = [t for t in tags if t not in started and _held_tag(held, t)]
        if not stale:
            return
        log.info("pgcelery.broker.handoff_given_back", extra={"count": len(stale)})
        try:
            self._channel._release(stale)
        except psycopg.Error as exc:
            log.warning(
                "pgcelery.broker.release_failed",
                extra={"count": len(stale), "error": type(exc).__name__},
            )

    def stop(self) -> None:
        self._channel._acks.stop()
        renewer = self._channel._renewer
        if renewer is not None:
            renewer.stop()
        self._channel._drop_connection()


def _held_tag(held: dict[int, str], delivery_tag: str) -> bool:
    parsed = parse_tag(delivery_tag)
    return parsed is not None and held.get(parsed[0]) == parsed[1]
