"""The dashboard's actions: retry a failed task, revoke a pending one, purge, pause or resume a
queue, replay a dead letter.

Each is offered only with ``PGCELERY_DASHBOARD_ACTIONS=true``, runs only on a POST carrying a
token this process signed for exactly that action and target (shown on the confirmation page,
valid once and for ten minutes, so another site cannot forge the request: see
:mod:`pgcelery.dashboard.security`), and is logged as a structured
event naming the action, its target, its outcome and the user.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from celery import Celery, states

from pgcelery.broker import dead_letters, pauses
from pgcelery.dashboard.queries import Queries
from pgcelery.results.revocation import revoke_waiting

log = logging.getLogger(__name__)

ACTIONS = ("retry", "revoke", "purge", "replay", "pause", "resume")
TOKEN_LIFETIME = 600.0
#: States a result can be retried from.
RETRYABLE_STATES = (states.FAILURE, states.REVOKED)


class ActionRefused(Exception):
    """The action cannot be done on this target now; the message says why."""


@dataclass(frozen=True)
class Outcome:
    message: str
    task_id: str | None = None


class Tokens:
    """Confirmation tokens: an HMAC of action, target and expiry under a per-process key."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def _sign(self, action: str, target: str, expires: int, nonce: str) -> str:
        text = f"{action}\0{target}\0{expires}\0{nonce}".encode()
        return hmac.new(self._key, text, hashlib.sha256).hexdigest()

    def issue(self, action: str, target: str) -> str:
        """``<expiry>.<nonce>.<signature>``: each confirmation page gets a token of its own."""
        expires = int(time.time() + TOKEN_LIFETIME)
        nonce = secrets.token_hex(8)
        return f"{expires}.{nonce}.{self._sign(action, target, expires, nonce)}"

    def valid(self, token: str, action: str, target: str) -> bool:
        stamp, _, rest = token.partition(".")
        nonce, _, signature = rest.partition(".")
        if not stamp.isdigit() or int(stamp) < time.time():
            return False
        return hmac.compare_digest(signature, self._sign(action, target, int(stamp), nonce))


class Actions:
    def __init__(self, queries: Queries, app: Celery) -> None:
        self.queries = queries
        self.app = app

    def describe(self, action: str, target: str) -> str:
        """What the confirmation page says the action will do."""
        if action == "retry":
            return f"Send task {target} again, by name, with its stored arguments."
        if action == "revoke":
            return f"Delete the pending message of task {target} and mark it REVOKED."
        if action == "replay":
            return f"Put dead letter {target} back on its queue, with a fresh delivery count."
        if action == "pause":
            return (
                f"Pause queue {target}: no worker claims from it until it is resumed "
                "(running tasks finish)."
            )
        if action == "resume":
            return f"Resume queue {target}: the workers claim from it again."
        return f"Delete every message waiting in queue {target} (messages being run stay)."

    def run(self, action: str, target: str, user: str | None) -> Outcome:
        try:
            outcome: Outcome = getattr(self, action)(target)
        except ActionRefused as exc:
            log.warning(
                "pgcelery.dashboard.action_refused",
                extra={"action": action, "target": target, "user": user, "reason": str(exc)},
            )
            raise
        log.info(
            "pgcelery.dashboard.action",
            extra={
                "action": action,
                "target": target,
                "user": user,
                "outcome": outcome.message,
                "new_task_id": outcome.task_id,
            },
        )
        return outcome

    def retry(self, task_id: str) -> Outcome:
        detail = self.queries.task(task_id)
        if detail is None or detail.status not in RETRYABLE_STATES or not detail.name:
            raise ActionRefused(
                f"task {task_id} is not a failed or revoked result with a task name; "
                "only those can be retried"
            )
        args = detail.args if isinstance(detail.args, list) else []
        kwargs = detail.kwargs if isinstance(detail.kwargs, dict) else {}
        options: dict[str, Any] = {"queue": detail.queue} if detail.queue else {}
        sent = self.app.send_task(detail.name, args=args, kwargs=kwargs, **options)
        return Outcome(f"task {task_id} sent again as {sent.id}", task_id=str(sent.id))

    def revoke(self, task_id: str) -> Outcome:
        # Only a message no worker holds (a claimed one is already running): deleted in the
        # transaction that stores REVOKED (pgcelery.results.revocation).
        deleted = revoke_waiting(self.app, [task_id], reason="revoked from the dashboard")
        if not deleted:
            raise ActionRefused(
                f"task {task_id} has no pending message (it ran, is running, or was revoked)"
            )
        return Outcome(f"task {task_id} revoked; its message was deleted")

    def purge(self, queue: str) -> Outcome:
        n = self.queries.names
        with self.queries.pool().connection() as conn:
            known = conn.execute(f"SELECT id FROM {n.queue} WHERE name = %s", (queue,)).fetchone()
            if known is None:
                raise ActionRefused(f"there is no queue named {queue}")
            deleted = conn.execute(
                f"DELETE FROM {n.message} WHERE queue_id = %s"
                " AND NOT (lease_token IS NOT NULL AND visible_at > now())",
                (known[0],),
            ).rowcount
        return Outcome(f"queue {queue} purged: {deleted} message(s) deleted")

    def pause(self, queue: str) -> Outcome:
        with self.queries.pool().connection() as conn:
            changed = pauses.pause(conn, self.queries.names, queue)
        return Outcome(f"queue {queue} {'paused' if changed else 'was already paused'}")

    def resume(self, queue: str) -> Outcome:
        with self.queries.pool().connection() as conn:
            if not pauses.resume(conn, self.queries.names, queue):
                raise ActionRefused(f"queue {queue} is not paused")
        return Outcome(f"queue {queue} resumed")

    def replay(self, target: str) -> Outcome:
        if not target.isdigit():
            raise ActionRefused(f"{target!r} is not a dead letter id")
        with self.queries.pool().connection() as conn:
            replayed = dead_letters.replay(conn, self.queries.names, [int(target)])
        if not replayed:
            raise ActionRefused(f"there is no dead letter {target} (replayed or purged already?)")
        return Outcome(f"dead letter {target} is back on its queue")
