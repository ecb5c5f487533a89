"""Deliveries: when a message is due, the tag that names one lease, and what a closing
channel hands back.

A delivery tag is ``pgcelery:<message id>:<lease token>``: an ack, reject or release carries the
token, so it only ever touches the lease it was given (fencing). When a channel closes because
its connection broke, kombu asks it to hand back every message it holds unacked. A message whose
task has not started goes back to the queue at once. A message whose task is still running does
not: its lease is kept and renewed, and the task's ack deletes it when it finishes. Handing it
back would let another worker (or another thread of this one) start the same task while the
first run goes on.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import psycopg
from kombu.transport import virtual
from kombu.utils.json import loads

from pgcelery.broker.dead_letters import OVERSIZED, UNREADABLE, Refused

log = logging.getLogger(__name__)


def tag(message_id: int, token: uuid.UUID | str) -> str:
    return f"pgcelery:{message_id}:{token}"


def parse_tag(delivery_tag: Any) -> tuple[int, str] | None:
    if not isinstance(delivery_tag, str) or not delivery_tag.startswith("pgcelery:"):
        return None
    _, message_id, token = delivery_tag.split(":", 2)
    return int(message_id), token


def decode_payload(raw: str) -> tuple[dict[str, Any] | None, str | None]:
    """The message, or None and why not: a payload that is not a JSON object can never run."""
    try:
        payload = loads(raw)
    except ValueError:
        return None, UNREADABLE
    return (payload, None) if isinstance(payload, dict) else (None, UNREADABLE)


Claimed = tuple[int, str, str, dict[str, Any]]


def sort_claimed(
    rows: Sequence[tuple[Any, ...]], queue_names: dict[int, str], max_deliveries: int
) -> tuple[list[Claimed], list[Refused]]:
    """Split a claim's rows into messages to deliver, (id, token, queue, payload) each with its
    delivery tag set, and messages to refuse: unreadable, too large (``raw`` None: the claim
    did not read it), or over the delivery limit."""
    claimed: list[Claimed] = []
    refused: list[Refused] = []
    for message_id, queue_id, token, deliveries, raw, _, previous, priority, *_ in rows:
        queue = queue_names.get(queue_id, "")
        payload, reason = (None, OVERSIZED) if raw is None else decode_payload(raw)
        if payload is None or 0 < max_deliveries < deliveries:
            item = Refused(
                message_id, str(token), queue, raw, payload, priority, deliveries - 1, previous
            )
            refused.append(item if reason is None else replace(item, reason=reason))
            continue
        props = payload.setdefault("properties", {})
        headers = payload.get("headers")
        if isinstance(headers, dict) and headers.get("pgcelery_revoked"):
            _known_revoked(headers.get("id"))
        props["delivery_tag"] = tag(message_id, token)
        props.setdefault("delivery_info", {})["redelivered"] = deliveries > 1
        _clear_past_eta(payload)
        claimed.append((message_id, str(token), queue, payload))
    return claimed, refused


def _known_revoked(task_id: Any) -> None:
    """A message revoked while a worker held it (pgcelery.results.revocation): tell this
    worker's Celery, which then skips the task, stores REVOKED and acks, as for any revoke."""
    state = sys.modules.get("celery.worker.state")
    if state is not None and isinstance(task_id, str):
        state.revoked.add(task_id)


#: Seconds of clock difference between the database and a worker under which an ``eta`` counts
#: as reached: the claim only returns a scheduled message once the database's clock reached it.
ETA_TOLERANCE = 1.0


def _clear_past_eta(payload: dict[str, Any]) -> None:
    """A message claimed when due runs as an ordinary one: Celery raises a worker's prefetch
    window by one for every message with an ``eta`` until it runs, so a worker handed due
    scheduled messages would claim ever more of them and leave none to the others. The time is
    kept in the ``pgcelery_eta`` header. An ``eta`` still ahead (a message queued before
    revision 0007, when scheduled messages were not held back) keeps Celery's own handling."""
    due = due_at(payload)
    headers = payload.get("headers")
    if due is None or not isinstance(headers, dict):
        return
    if (due - datetime.now(UTC)).total_seconds() <= ETA_TOLERANCE:
        headers["pgcelery_eta"] = headers["eta"]
        headers["eta"] = None


def due_at(message: dict[str, Any]) -> datetime | None:
    """When a message is due: its Celery ``eta`` header (``countdown`` becomes one), if any."""
    headers = message.get("headers")
    eta = headers.get("eta") if isinstance(headers, dict) else None
    if not isinstance(eta, str):
        return None
    try:
        found = datetime.fromisoformat(eta)
    except ValueError:
        return None  # not a time: due at once, and Celery will say what it thinks of it
    # Celery writes naive times in UTC when enable_utc is on (pgcelery's default).
    return found if found.tzinfo is not None else found.replace(tzinfo=UTC)


#: Seconds a message handed to the pool but not yet seen starting stays leased after its channel
#: closed: a prefork child accepts a job within milliseconds once the parent's loop runs again.
HANDOFF_GRACE = 5.0


def _tag_of(request: Any) -> str | None:
    delivery_tag = getattr(getattr(request, "message", None), "delivery_tag", None)
    return delivery_tag if isinstance(delivery_tag, str) else None


def running_delivery_tags() -> tuple[frozenset[str], frozenset[str]]:
    """Tags of the messages whose tasks this process's Celery worker runs now: those it saw
    start (``active_requests``: started here, in a pool thread, or accepted by a prefork child),
    and those handed to the pool and not seen starting yet (a prefork parent learns that a child
    took a job only when it reads the child's reply). Outside a worker, nothing runs.
    """
    state = sys.modules.get("celery.worker.state")
    if state is None:
        return frozenset(), frozenset()
    started = {t for r in tuple(state.active_requests) if (t := _tag_of(r)) is not None}
    handed = {
        t
        for r in tuple(state.reserved_requests)
        if getattr(r, "_apply_result", None) is not None and (t := _tag_of(r)) is not None
    }
    return frozenset(started), frozenset(handed - started)


class QoS(virtual.QoS):
    """Unacked messages that never started are handed back in one statement; running ones stay
    leased until their task acks them."""

    def restore_unacked(self) -> list[Any]:
        self._flush()
        unacked = [t for t in self._delivered if t not in self._dirty]
        self._delivered.clear()
        started, handed = running_delivery_tags()
        handed_back = [t for t in unacked if t not in started and t not in handed]
        undecided = [t for t in unacked if t in handed]
        if len(handed_back) < len(unacked):
            log.info(
                "pgcelery.broker.running_kept",
                extra={"count": len(unacked) - len(handed_back), "undecided": len(undecided)},
            )
        if undecided:
            # Handed to a prefork child that may be running it: kept for now, given back only
            # if it has not started (nor finished) by then.
            self.channel.settling.recheck_later(undecided, HANDOFF_GRACE)
        try:
            self.channel._release(handed_back, started=False)
        except psycopg.Error as exc:
            # The leases run out by themselves; the messages come back then instead of now.
            log.warning(
                "pgcelery.broker.release_failed",
                extra={"count": len(handed_back), "error": type(exc).__name__},
            )
        return []
