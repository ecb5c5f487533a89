"""Least privilege by role: what a producer, a worker and an operator may do to each table.

Three sets of rights, each held by a role named in the settings (``PGCELERY_PRODUCER_ROLE``,
``PGCELERY_WORKER_ROLE``, ``PGCELERY_OPS_ROLE``); a set whose variable is unset is held by the
app role (``PGCELERY_APP_ROLE``), so a deployment that sets none of them grants the app role
everything, as before these roles existed.

* **producer**: enqueue (``INSERT`` into ``kombu_message``; it may count a queue's messages but
  never read their payloads), create queues,
  read results and save groups. It cannot claim, delete or read messages, write results, touch
  the dead letters or send remote control.
* **worker**: claim, lease, ack, store results, bury dead letters, heartbeats, bindings, beat and
  the prune pass; it may write task events to ``pgcelery_broadcast`` but no remote control
  except Celery's start-up ``hello`` (a row-level security policy, not a grant: see revision
  ``0010_security_roles``).
* **ops**: everything the worker may do, and remote control (``celery.pidbox``), which is what
  ``revoke``, ``shutdown``, ``pool_restart``, the dashboard's actions and ``pgcelery
  dead-letters`` need.

The privileges below are what revision ``0010_security_roles`` grants; earlier revisions
granted the app role the worker's set.
"""

from __future__ import annotations

from pgcelery.schema.names import (
    BEAT_TABLE,
    BINDING_TABLE,
    BROADCAST_TABLE,
    CHORD_PART_TABLE,
    CHORD_TABLE,
    DEAD_LETTER_TABLE,
    GROUP_TABLE,
    LIMIT_STATE_TABLE,
    MESSAGE_TABLE,
    PAUSE_TABLE,
    QUEUE_TABLE,
    TASK_TABLE,
    TENANT_WEIGHT_TABLE,
    UNIQUE_HOLD_TABLE,
    WORKER_TABLE,
)

DML = "SELECT, INSERT, UPDATE, DELETE"

#: The exchange Celery's remote control broadcasts on; only the ops role may write to it.
CONTROL_EXCHANGE_SUFFIX = ".pidbox"

PRODUCER_TABLES: tuple[tuple[str, str], ...] = (
    (QUEUE_TABLE, "SELECT, INSERT"),
    # Declaring a queue counts its messages (kombu's queue_declare): the columns that takes,
    # never the payloads or the tenants.
    (MESSAGE_TABLE, "SELECT (queue_id, visible, visible_at), INSERT"),
    (TASK_TABLE, "SELECT"),
    (GROUP_TABLE, "SELECT, INSERT"),
    # A send with unique_for records the key's hold (pgcelery.broker.unique).
    (UNIQUE_HOLD_TABLE, "SELECT, INSERT"),
)
PRODUCER_SEQUENCES: tuple[str, ...] = (
    "queue_id_sequence",
    "message_id_sequence",
    "taskset_id_sequence",
)

WORKER_TABLES: tuple[tuple[str, str], ...] = (
    (QUEUE_TABLE, "SELECT, INSERT, DELETE"),
    (MESSAGE_TABLE, DML),
    (TASK_TABLE, DML),
    (GROUP_TABLE, DML),
    (WORKER_TABLE, DML),
    (BEAT_TABLE, DML),
    (BROADCAST_TABLE, "SELECT, INSERT, DELETE"),
    (BINDING_TABLE, DML),
    (DEAD_LETTER_TABLE, "SELECT, INSERT, DELETE"),
    (UNIQUE_HOLD_TABLE, DML),
    # Workers read which queues are paused; only operators pause and resume them.
    (PAUSE_TABLE, "SELECT"),
)
OPS_TABLES: tuple[tuple[str, str], ...] = (
    *WORKER_TABLES[:-1],
    (PAUSE_TABLE, "SELECT, INSERT, DELETE"),
)
WORKER_SEQUENCES: tuple[str, ...] = (
    *PRODUCER_SEQUENCES,
    "task_id_sequence",
    f"{BROADCAST_TABLE}_id_seq",
)

#: What ``pgcelery check`` requires of a producer-only role (table → privileges), and sequences.
PRODUCER_REQUIRED: dict[str, tuple[str, ...]] = {
    QUEUE_TABLE: ("SELECT", "INSERT"),
    MESSAGE_TABLE: ("INSERT",),
    TASK_TABLE: ("SELECT",),
    GROUP_TABLE: ("SELECT", "INSERT"),
}

#: Set of rights → (tables, sequences) it is granted.
RIGHTS: dict[str, tuple[tuple[tuple[str, str], ...], tuple[str, ...]]] = {
    "producer": (PRODUCER_TABLES, PRODUCER_SEQUENCES),
    "worker": (WORKER_TABLES, WORKER_SEQUENCES),
    "ops": (OPS_TABLES, WORKER_SEQUENCES),
}

#: What revision ``0012_fair_limits`` grants: workers keep the limits' state and read weights;
#: operators (and the app role) set weights.
LIMIT_RIGHTS: dict[str, tuple[tuple[str, str], ...]] = {
    "producer": (),
    "worker": ((LIMIT_STATE_TABLE, DML), (TENANT_WEIGHT_TABLE, "SELECT")),
    "ops": ((LIMIT_STATE_TABLE, DML), (TENANT_WEIGHT_TABLE, DML)),
}

#: What revision ``0011_chords`` grants each set of rights: a producer creates a chord (and
#: clears a reapplied one's parts), workers count parts, fire bodies and prune.
CHORD_RIGHTS: dict[str, tuple[tuple[str, str], ...]] = {
    "producer": ((CHORD_TABLE, "SELECT, INSERT, UPDATE"), (CHORD_PART_TABLE, "SELECT, DELETE")),
    "worker": ((CHORD_TABLE, DML), (CHORD_PART_TABLE, "SELECT, INSERT, DELETE")),
    "ops": ((CHORD_TABLE, DML), (CHORD_PART_TABLE, "SELECT, INSERT, DELETE")),
}
