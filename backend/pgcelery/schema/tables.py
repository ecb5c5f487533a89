"""The tables pgcelery owns, as SQLAlchemy metadata; their names (defined in
:mod:`pgcelery.schema.names`, importable without SQLAlchemy) are re-exported here.

The metadata starts from kombu's and Celery's own models (so an upgrade of either that changes
a model shows up as drift against the migrations) and adds the columns pgcelery's broker needs.
Migrations create these tables; nothing here ever runs ``create_all``.
"""

from __future__ import annotations

from typing import Any, cast

import sqlalchemy as sa
from celery.backends.database.models import Task, TaskExtended, TaskSet  # noqa: F401
from celery.backends.database.session import ResultModelBase
from kombu.transport.sqlalchemy.models import Message as MessageBase
from kombu.transport.sqlalchemy.models import ModelBase, class_registry
from kombu.transport.sqlalchemy.models import Queue as QueueBase
from sqlalchemy.dialects import postgresql

from pgcelery.schema.names import (
    BEAT_TABLE as BEAT_TABLE,
)
from pgcelery.schema.names import (
    BINDING_TABLE as BINDING_TABLE,
)
from pgcelery.schema.names import (
    BROADCAST_CHANNEL as BROADCAST_CHANNEL,
)
from pgcelery.schema.names import (
    BROADCAST_TABLE as BROADCAST_TABLE,
)
from pgcelery.schema.names import (
    CHORD_PART_TABLE as CHORD_PART_TABLE,
)
from pgcelery.schema.names import (
    CHORD_TABLE as CHORD_TABLE,
)
from pgcelery.schema.names import (
    DEAD_LETTER_TABLE as DEAD_LETTER_TABLE,
)
from pgcelery.schema.names import (
    GROUP_TABLE as GROUP_TABLE,
)
from pgcelery.schema.names import (
    LIMIT_GROUP as LIMIT_GROUP,
)
from pgcelery.schema.names import (
    LIMIT_STATE_TABLE as LIMIT_STATE_TABLE,
)
from pgcelery.schema.names import (
    LIMITED as LIMITED,
)
from pgcelery.schema.names import (
    MESSAGE_CHANNEL as MESSAGE_CHANNEL,
)
from pgcelery.schema.names import (
    MESSAGE_TABLE as MESSAGE_TABLE,
)
from pgcelery.schema.names import (
    PAUSE_TABLE as PAUSE_TABLE,
)
from pgcelery.schema.names import (  # re-exported: the old import path keeps working
    QUEUE_TABLE as QUEUE_TABLE,
)
from pgcelery.schema.names import (
    RESULT_CHANNEL as RESULT_CHANNEL,
)
from pgcelery.schema.names import (
    TASK_TABLE as TASK_TABLE,
)
from pgcelery.schema.names import (
    TENANT_GROUP as TENANT_GROUP,
)
from pgcelery.schema.names import (
    TENANT_OF_KWARGS as TENANT_OF_KWARGS,
)
from pgcelery.schema.names import (
    TENANT_WEIGHT_TABLE as TENANT_WEIGHT_TABLE,
)
from pgcelery.schema.names import (
    UNIQUE_HOLD_TABLE as UNIQUE_HOLD_TABLE,
)
from pgcelery.schema.names import (
    UNLIMITED as UNLIMITED,
)
from pgcelery.schema.names import (
    VERSION_TABLE as VERSION_TABLE,
)
from pgcelery.schema.names import (
    WORKER_TABLE as WORKER_TABLE,
)
from pgcelery.schema.names import (
    Names as Names,
)


def _kombu_model(name: str, base: type, tablename: str) -> sa.Table:
    # Same registry key kombu's transport uses, so whichever of us defines the class first wins
    # and the other reuses it instead of declaring the table twice.
    cls: Any = class_registry.get(name) or type(
        name, (base, ModelBase), {"__tablename__": tablename}
    )
    table: sa.Table = cls.__table__
    return table


def model_tables() -> list[sa.Table]:
    """kombu's and Celery's tables exactly as their models declare them."""
    return [
        _kombu_model("Queue", QueueBase, QUEUE_TABLE),
        _kombu_model("Message", MessageBase, MESSAGE_TABLE),
        ResultModelBase.metadata.tables[TASK_TABLE],
        ResultModelBase.metadata.tables[GROUP_TABLE],
    ]


def build_metadata(schema: str = "public") -> sa.MetaData:
    """The full schema at head: the model tables plus pgcelery's additions, in ``schema``."""
    # The default "ix_%(column_0_label)s" puts the schema into index names ("ix_jobs_kombu_…")
    # when the tables are not in public; the migrations name them the same in every schema.
    md = sa.MetaData(naming_convention={"ix": "ix_%(table_name)s_%(column_0_name)s"})
    target = None if schema == "public" else schema
    for table in model_tables():
        # Never RETAIN: Celery's backend mutates its model's schema when configured.
        table.to_metadata(md, schema=cast(Any, target))

    def named(name: str) -> sa.Table:
        return md.tables[f"{schema}.{name}" if target else name]

    # Revision 0002 widens the 32-bit ids of the busy tables (see there).
    for name in (MESSAGE_TABLE, TASK_TABLE, GROUP_TABLE):
        named(name).c.id.type = sa.BigInteger()
    message = named(MESSAGE_TABLE)
    # Added by revision 0002 (the broker): claiming, leases and priorities.
    message.append_column(sa.Column("priority", sa.SmallInteger, nullable=False))
    message.append_column(
        sa.Column(
            "visible_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        )
    )
    message.append_column(sa.Column("lease_token", postgresql.UUID(as_uuid=True)))
    message.append_column(
        sa.Column("deliveries", sa.Integer, nullable=False, server_default=sa.text("0"))
    )
    sa.Index(
        "ix_kombu_message_claim",
        message.c.queue_id,
        message.c.priority.desc(),
        message.c.id,
    )
    # Added by revision 0003: one row per worker node, refreshed by its heartbeat.
    worker = sa.Table(
        WORKER_TABLE,
        md,
        sa.Column("hostname", sa.Text, primary_key=True),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("pool", sa.Text, nullable=False),
        sa.Column("concurrency", sa.Integer, nullable=False),
        sa.Column(
            "queues", postgresql.ARRAY(sa.Text), nullable=False, server_default=sa.text("'{}'")
        ),
        sa.Column("tasks_in_flight", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("processed", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("version", sa.Text),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column(
            "last_seen", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
        ),
        schema=target,
    )
    sa.Index("ix_pgcelery_worker_last_seen", worker.c.last_seen)
    # Added by revision 0004: the broadcast log (fanout and events) and shared bindings.
    sa.Table(
        BROADCAST_TABLE,
        md,
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("exchange", sa.Text, nullable=False),
        sa.Column("routing_key", sa.Text, nullable=False, server_default=sa.text("''")),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        schema=target,
    )
    binding = sa.Table(
        BINDING_TABLE,
        md,
        sa.Column("exchange", sa.Text, primary_key=True),
        sa.Column("queue", sa.Text, primary_key=True),
        sa.Column("routing_key", sa.Text, primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        schema=target,
    )
    sa.Index("ix_pgcelery_binding_expires_at", binding.c.expires_at)
    # Added by revision 0005: when each beat entry last fired (pgcelery.scheduling.beat).
    sa.Table(
        BEAT_TABLE,
        md,
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("task", sa.Text, nullable=False),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("total_run_count", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("last_task_id", sa.Text),
        schema=target,
    )
    # Added by revision 0006: the dashboard's keyset-paginated reads of recent results.
    task = named(TASK_TABLE)
    sa.Index("ix_celery_taskmeta_status_date_done", task.c.status, task.c.date_done, task.c.id)
    sa.Index("ix_celery_taskmeta_name_date_done", task.c.name, task.c.date_done, task.c.id)
    sa.Index(
        "ix_celery_taskmeta_tenant_date_done",
        sa.text(TENANT_OF_KWARGS),
        task.c.date_done,
        task.c.id,
        postgresql_where=sa.text(f"{TENANT_OF_KWARGS} IS NOT NULL"),
    )
    # Added by revision 0008: dead letters, and who claimed each message last.
    message.append_column(sa.Column("claimed_by", sa.Text))
    dead_letter = sa.Table(
        DEAD_LETTER_TABLE,
        md,
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("queue", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("priority", sa.SmallInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("deliveries", sa.Integer, nullable=False),
        sa.Column("task_id", sa.Text),
        sa.Column("task_name", sa.Text),
        sa.Column("last_worker", sa.Text),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column(
            "dead_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
        ),
        schema=target,
    )
    sa.Index("ix_pgcelery_dead_letter_dead_at", dead_letter.c.dead_at)
    # Added by revision 0009: unique tasks and paused queues (job control).
    message.append_column(sa.Column("unique_task", sa.Text))
    message.append_column(sa.Column("unique_key", sa.Text))
    sa.Index(
        "ix_kombu_message_unique",
        message.c.unique_task,
        message.c.unique_key,
        unique=True,
        postgresql_where=sa.text("unique_key IS NOT NULL"),
    )
    hold = sa.Table(
        UNIQUE_HOLD_TABLE,
        md,
        sa.Column("unique_task", sa.Text, primary_key=True),
        sa.Column("unique_key", sa.Text, primary_key=True),
        sa.Column("task_id", sa.Text, nullable=False),
        sa.Column("held_until", sa.DateTime(timezone=True)),
        schema=target,
    )
    sa.Index("ix_pgcelery_unique_hold_held_until", hold.c.held_until)
    sa.Table(
        PAUSE_TABLE,
        md,
        sa.Column("queue", sa.Text, primary_key=True),
        sa.Column(
            "paused_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
        ),
        schema=target,
    )
    # Added by revision 0010: the tenant of a tenant task's message and result, for row-level
    # security (the policies themselves are not part of this metadata).
    for table in (message, task):
        table.append_column(sa.Column("tenant_id", sa.Text))
        sa.Index(
            f"ix_{table.name}_tenant_id",
            table.c.tenant_id,
            postgresql_where=sa.text("tenant_id IS NOT NULL"),
        )
    # Added by revision 0011: chords joined in the database (pgcelery.results.chords).
    chord = sa.Table(
        CHORD_TABLE,
        md,
        sa.Column("group_id", sa.Text, primary_key=True),
        sa.Column("size", sa.Integer),
        sa.Column("done", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("header", sa.Text, nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("fired_at", sa.DateTime(timezone=True)),
        schema=target,
    )
    sa.Index("ix_pgcelery_chord_created_at", chord.c.created_at)
    _add_fair_limits(md, message, target)
    sa.Table(
        CHORD_PART_TABLE,
        md,
        sa.Column(
            "group_id",
            sa.Text,
            sa.ForeignKey(chord.c.group_id, ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("task_id", sa.Text, primary_key=True),
        schema=target,
    )
    return md


def _add_fair_limits(md: sa.MetaData, message: sa.Table, target: str | None) -> None:
    """Added by revision 0012: fair share across tenants, concurrency and rate limits."""
    for name, type_ in (
        ("concurrency_key", sa.Text),
        ("concurrency_limit", sa.Integer),
        ("rate_key", sa.Text),
        ("rate_interval", sa.Float),
        ("limit_task", sa.Text),
    ):
        message.append_column(sa.Column(name, type_))
    sa.Index(
        "ix_kombu_message_fair",
        message.c.queue_id,
        message.c.priority.desc(),
        sa.text(TENANT_GROUP.replace("m.", "")),
        message.c.id,
        postgresql_where=sa.text(UNLIMITED.replace("m.", "")),
    )
    sa.Index(
        "ix_kombu_message_limited",
        message.c.queue_id,
        sa.text(LIMIT_GROUP.replace("m.", "")),
        message.c.priority.desc(),
        message.c.id,
        postgresql_where=sa.text(LIMITED.replace("m.", "")),
    )
    sa.Table(
        TENANT_WEIGHT_TABLE,
        md,
        sa.Column("tenant_id", sa.Text, primary_key=True),
        sa.Column("weight", sa.Integer, nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.CheckConstraint("weight BETWEEN 1 AND 1000", name="ck_pgcelery_tenant_weight_range"),
        schema=target,
    )
    state = sa.Table(
        LIMIT_STATE_TABLE,
        md,
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column(
            "holders",
            postgresql.ARRAY(sa.BigInteger),
            nullable=False,
            server_default=sa.text("'{}'::bigint[]"),
        ),
        sa.Column("next_at", sa.DateTime(timezone=True)),
        sa.Column(
            "touched_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        schema=target,
    )
    sa.Index("ix_pgcelery_limit_state_touched_at", state.c.touched_at)
