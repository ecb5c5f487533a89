"""The names of the tables pgcelery owns, as plain strings and as safe SQL identifiers.

Kept apart from :mod:`pgcelery.schema.tables` (the SQLAlchemy metadata the migrations compare
against) so that code running SQL on psycopg (a worker storing results, the broker) can name a
table without importing SQLAlchemy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

QUEUE_TABLE = "kombu_queue"
MESSAGE_TABLE = "kombu_message"
TASK_TABLE = "celery_taskmeta"
GROUP_TABLE = "celery_tasksetmeta"
BROADCAST_TABLE = "pgcelery_broadcast"
BINDING_TABLE = "pgcelery_binding"
WORKER_TABLE = "pgcelery_worker"
BEAT_TABLE = "pgcelery_beat"
DEAD_LETTER_TABLE = "pgcelery_dead_letter"
UNIQUE_HOLD_TABLE = "pgcelery_unique_hold"
PAUSE_TABLE = "pgcelery_queue_pause"
CHORD_TABLE = "pgcelery_chord"
CHORD_PART_TABLE = "pgcelery_chord_part"
TENANT_WEIGHT_TABLE = "pgcelery_tenant_weight"
LIMIT_STATE_TABLE = "pgcelery_limit_state"
#: A message's group for the fair claim: its tenant, or ``''`` for a global task.
TENANT_GROUP = "coalesce(m.tenant_id, '')"
#: A message under no concurrency or rate limit (the fair claim's), and one under a limit.
UNLIMITED = "m.concurrency_key IS NULL AND m.rate_key IS NULL"
LIMITED = "(m.concurrency_key IS NOT NULL OR m.rate_key IS NOT NULL)"
#: A limited message's key for the limited claim's rotation.
LIMIT_GROUP = "coalesce(m.concurrency_key, m.rate_key)"
#: NOTIFY channels: one for "a queue has a new message", one for "a result is ready".
MESSAGE_CHANNEL = "pgcelery_message"
RESULT_CHANNEL = "pgcelery_result"
#: NOTIFY channel for "a broadcast was published"; the payload is the exchange name.
BROADCAST_CHANNEL = "pgcelery_broadcast"
#: The tenant id in a result's stored kwargs (JSON bytes), as revision 0006 indexes it: an
#: immutable expression that never raises, whatever bytes the column holds. Spelled the way
#: PostgreSQL prints it back, so the no-drift comparison with the database matches.
TENANT_OF_KWARGS = (
    '"substring"(encode(kwargs, \'escape\'::text), \'"tenant_id": *"?([^",}]+)\'::text)'
)
#: The Alembic version table pgcelery uses when it migrates on its own.
VERSION_TABLE = "pgcelery_alembic_version"


@dataclass(frozen=True)
class Names:
    """Schema-qualified, quoted identifiers for raw SQL; the schema is a validated identifier."""

    schema: str = "public"

    def _q(self, name: str) -> str:
        return f'"{self.schema}"."{name}"'

    @cached_property
    def queue(self) -> str:
        return self._q(QUEUE_TABLE)

    @cached_property
    def message(self) -> str:
        return self._q(MESSAGE_TABLE)

    @cached_property
    def task(self) -> str:
        return self._q(TASK_TABLE)

    @cached_property
    def group(self) -> str:
        return self._q(GROUP_TABLE)

    @cached_property
    def broadcast(self) -> str:
        return self._q(BROADCAST_TABLE)

    @cached_property
    def binding(self) -> str:
        return self._q(BINDING_TABLE)

    @cached_property
    def worker(self) -> str:
        return self._q(WORKER_TABLE)

    @cached_property
    def beat(self) -> str:
        return self._q(BEAT_TABLE)

    @cached_property
    def dead_letter(self) -> str:
        return self._q(DEAD_LETTER_TABLE)

    @cached_property
    def chord(self) -> str:
        return self._q(CHORD_TABLE)

    @cached_property
    def chord_part(self) -> str:
        return self._q(CHORD_PART_TABLE)

    @cached_property
    def unique_hold(self) -> str:
        return self._q(UNIQUE_HOLD_TABLE)

    @cached_property
    def pause(self) -> str:
        return self._q(PAUSE_TABLE)

    @cached_property
    def tenant_weight(self) -> str:
        return self._q(TENANT_WEIGHT_TABLE)

    @cached_property
    def limit_state(self) -> str:
        return self._q(LIMIT_STATE_TABLE)

    def function(self, name: str) -> str:
        return self._q(name)

    def sequence(self, name: str) -> str:
        return self._q(name)

    @cached_property
    def version_table(self) -> str:
        return self._q(VERSION_TABLE)
