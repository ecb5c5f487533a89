"""Fair share across tenants, and concurrency and rate limits held by the claim itself.

- ``kombu_message.concurrency_key`` / ``concurrency_limit``: a message of a task with
  ``concurrency_limit`` carries its key (the task name, with the tenant or an argument's value
  when the limit is per key) and the limit. ``rate_key`` / ``rate_interval``: a message of a
  task with ``global_rate_limit`` carries its key and the seconds between two starts.
  ``limit_task`` names the task of such a message, for the metric of tasks waiting on a limit.
  A message with either key is *limited*; every other message is claimed as before.
- ``ix_kombu_message_fair``: unlimited messages by queue, priority, tenant group (the tenant id,
  or ``''`` for global tasks) and id; the fair claim walks it from one group to the next.
- ``ix_kombu_message_limited``: limited messages only (empty when no task has a limit), by queue,
  key (the concurrency key, else the rate key), priority and id: the limited claim goes from one
  key to the next in it.
- ``pgcelery_tenant_weight``: a tenant's share of the claims (``set_tenant_weight``).
- ``pgcelery_limit_state``: one row per limit key: the messages leased under a concurrency key
  (``holders``) and when a rate key may start its next task (``next_at``). The row is locked
  while a claim decides, so two workers never both take the last slot; what holds a slot is
  read from the leases themselves, so a killed worker's slots free as its leases run out.
- ``pgcelery_claim_fair`` (rows: message id, its group, how many of the group's turn it makes),
  ``pgcelery_claim_in_order`` (fair share off) and ``pgcelery_claim_limited``: the parts of the
  claim statement (:mod:`pgcelery.broker.claim_sql` explains them).
- A trigger NOTIFYs when a message under a concurrency key is deleted (its task finished), so
  a worker waiting for a free slot claims at once instead of at its next poll.

No column the claim's UPDATE writes is indexed here, so claims stay HOT updates.

Revision ID: 0012_fair_limits
Revises: 0011_chords
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from pgcelery.schema.migrations.grants import grant
from pgcelery.schema.names import (
    LIMIT_GROUP,
    LIMIT_STATE_TABLE,
    LIMITED,
    MESSAGE_CHANNEL,
    TENANT_GROUP,
    TENANT_WEIGHT_TABLE,
    UNLIMITED,
)
from pgcelery.schema.roles import LIMIT_RIGHTS
from pgcelery.settings import MigrationSettings

revision: str = "0012_fair_limits"
down_revision: str | None = "0011_chords"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Keys the limited claim visits per queue and claim (the next claim goes on from there), and
#: the messages of one key it reads per visit.
KEYS_PER_CLAIM = 50
KEY_SCAN = 50

_COLUMNS = (
    ("concurrency_key", sa.Text()),
    ("concurrency_limit", sa.Integer()),
    ("rate_key", sa.Text()),
    ("rate_interval", sa.Float()),
    ("limit_task", sa.Text()),
)


def _fair_function(q: str) -> str:
    m = f"{q}.kombu_message"
    ready = f"m.visible AND m.visible_at <= now() AND {UNLIMITED}"
    weights = f"{q}.pgcelery_tenant_weight"
    # The next group after g at the top priority: an index seek.
    after = (
        f"SELECT {TENANT_GROUP} AS grp FROM {m} m WHERE m.queue_id = p_queue"
        f" AND m.priority = {{top}} AND {TENANT_GROUP} > g AND {ready}"
        f" ORDER BY {TENANT_GROUP} LIMIT 1"
    )
    take = (
        f"SELECT s.id FROM (SELECT m.id FROM {m} m WHERE m.queue_id = p_queue"
        f" AND m.priority = top AND {TENANT_GROUP} = g AND {ready}"
        # This transaction's own row locks are not skipped: leave out what it already took.
        " AND m.id <> ALL(mine) ORDER BY m.id LIMIT {limit} FOR UPDATE SKIP LOCKED) s"
    )
    # One group after another, in the order of the index, wrapping around; each group visited
    # gives its weight's worth of messages (times ``mult`` once a whole round left room in the
    # batch: a queue with one group fills the batch in its second visit, not one row a visit).
    # The usual claim (no weights set) runs two statements: the first look, and one take.
    return f"""
CREATE FUNCTION {q}.pgcelery_claim_fair(p_queue integer, p_n integer, p_after text, p_used integer)
RETURNS TABLE(id bigint, grp text, turn integer) LANGUAGE plpgsql ROWS 10 AS $fn$
#variable_conflict use_column
DECLARE
  top smallint;
  g text := p_after;
  nxt text;
  first_group text;
  mid bigint;
  weighted boolean;
  first_look boolean := true;
  seen text[] := '{{}}';
  mine bigint[] := '{{}}';
  w integer;
  got integer;
  taken integer := 0;
  round_taken integer := 0;
  mult integer := 1;
BEGIN
  -- The first look: the top priority with a ready message and its first group (the first
  -- entry of the index at that priority is both), the group after the cursor, and whether any
  -- tenant has a weight (else every weight is 1, and none is looked up). Past the last group,
  -- the rotation wraps round to the first without reading the index again.
  SELECT t.priority, t.grp, coalesce(x.grp, t.grp), EXISTS (SELECT 1 FROM {weights})
    INTO top, first_group, nxt, weighted
    FROM (SELECT m.priority, {TENANT_GROUP} AS grp FROM {m} m
          WHERE m.queue_id = p_queue AND {ready}
          ORDER BY m.priority DESC, {TENANT_GROUP} LIMIT 1) t
    LEFT JOIN LATERAL ({after.format(top="t.priority")}) x ON true;
  IF NOT FOUND THEN RETURN; END IF;
  IF g IS NOT NULL AND p_used > 0 AND weighted THEN
    -- The group the last claim stopped in has the rest of its turn first.
    SELECT coalesce(max(t.weight), 1) - p_used INTO w FROM {weights} t WHERE t.tenant_id = g;
    IF w > 0 THEN
      FOR mid IN {take.format(limit="least(w, p_n)")} LOOP
        id := mid; grp := g; turn := p_used + taken + 1; mine := mine || id;
        taken := taken + 1;
        RETURN NEXT;
      END LOOP;
    END IF;
  END IF;
  LOOP
    EXIT WHEN taken >= p_n;
    IF NOT first_look THEN
      SELECT x.grp INTO nxt FROM ({after.format(top="top")}) x;
      nxt := coalesce(nxt, first_group);
    END IF;
    first_look := false;
    EXIT WHEN nxt IS NULL;
    IF nxt = ANY(seen) THEN
      -- A whole round: stop if it found nothing, else go round again with bigger turns, so a
      -- queue with one group fills the batch in its second visit, not one row a visit.
      EXIT WHEN round_taken = 0;
      mult := greatest(1, ceil((p_n - taken)::numeric / round_taken)::integer);
      round_taken := 0;
      seen := '{{}}';
    END IF;
    seen := seen || nxt;
    g := nxt;
    nxt := NULL;
    w := 1;
    IF weighted THEN
      SELECT coalesce(max(t.weight), 1) INTO w FROM {weights} t WHERE t.tenant_id = g;
    END IF;
    got := 0;
    FOR mid IN {take.format(limit="least(w * mult, p_n - taken)")} LOOP
      got := got + 1;
      id := mid; grp := g; turn := got; mine := mine || id;
      RETURN NEXT;
    END LOOP;
    taken := taken + got;
    round_taken := round_taken + got;
  END LOOP;
END
$fn$;
"""


def _in_order_function(q: str) -> str:
    m = f"{q}.kombu_message"
    # The claim with fair share off. Not one SELECT ... LIMIT with the unlimited condition
    # added: the planner estimates that condition as rare on a table it has no statistics for
    # (autovacuum may be off), and then sorts the whole queue on every claim instead of reading
    # ix_kombu_message_claim in order. A cursor is planned for its first rows: in order. Its
    # estimated cost is the whole queue's, though, and past jit_above_cost PostgreSQL would
    # compile it on every claim (8 ms a claim with a million messages waiting): no JIT here.
    return f"""
CREATE FUNCTION {q}.pgcelery_claim_in_order(p_queue integer, p_n integer)
RETURNS TABLE(id bigint) LANGUAGE plpgsql ROWS 10 SET jit = off AS $fn$
#variable_conflict use_column
DECLARE
  r record;
  taken integer := 0;
BEGIN
  FOR r IN SELECT m.id AS mid, {UNLIMITED} AS unlimited FROM {m} m
      WHERE m.queue_id = p_queue AND m.visible AND m.visible_at <= now()
      ORDER BY m.priority DESC, m.id
  LOOP
    EXIT WHEN taken >= p_n;
    CONTINUE WHEN NOT r.unlimited;
    PERFORM 1 FROM {m} m WHERE m.id = r.mid AND m.visible AND m.visible_at <= now()
      FOR UPDATE SKIP LOCKED;
    CONTINUE WHEN NOT FOUND;
    taken := taken + 1;
    id := r.mid;
    RETURN NEXT;
  END LOOP;
END
$fn$;
"""


def _limited_function(q: str) -> str:
    m = f"{q}.kombu_message"
    state = f"{q}.{LIMIT_STATE_TABLE}"
    live = "m.lease_token IS NOT NULL AND m.visible_at > now() AND m.id <> ALL(p_acked)"
    ready = f"m.visible AND m.visible_at <= now() AND {LIMITED}"
    # Keys in rotation, like the fair claim's tenant groups: one probe of the index finds the
    # next key with a ready message, so a key at its limit costs one visit, however many of
    # its messages wait, and never hides the keys behind it.
    return f"""
CREATE FUNCTION {q}.pgcelery_claim_limited(
  p_queues integer[], p_afters text[], p_acked bigint[], p_n integer)
RETURNS TABLE(id bigint, wait double precision, queue integer, grp text)
LANGUAGE plpgsql ROWS 10 AS $fn$
#variable_conflict use_column
DECLARE
  qi integer;
  g text;
  first_g text;
  nxt text;
  visited integer;
  wrapped boolean;
  r record;
  blocked text[] := '{{}}';
  mine bigint[] := '{{}}';
  holding bigint[];
  next_start timestamptz;
  soonest double precision;
  taken integer := 0;
BEGIN
  FOR qi IN 1 .. coalesce(cardinality(p_queues), 0) LOOP
    EXIT WHEN taken >= p_n;
    g := p_afters[qi];
    first_g := NULL;
    visited := 0;
    wrapped := false;
    LOOP
      EXIT WHEN taken >= p_n OR visited >= {KEYS_PER_CLAIM};
      IF g IS NULL THEN
        SELECT {LIMIT_GROUP} INTO nxt FROM {m} m WHERE m.queue_id = p_queues[qi] AND {ready}
         ORDER BY {LIMIT_GROUP} LIMIT 1;
        EXIT WHEN NOT FOUND;
      ELSE
        SELECT {LIMIT_GROUP} INTO nxt FROM {m} m
         WHERE m.queue_id = p_queues[qi] AND {LIMIT_GROUP} > g AND {ready}
         ORDER BY {LIMIT_GROUP} LIMIT 1;
        IF NOT FOUND THEN
          EXIT WHEN wrapped;
          wrapped := true;  -- past the last key: wrap around to the first
          g := NULL;
          CONTINUE;
        END IF;
      END IF;
      EXIT WHEN nxt = first_g;  -- every key visited once
      first_g := coalesce(first_g, nxt);
      g := nxt;
      visited := visited + 1;
      FOR r IN SELECT m.id AS mid, 'c:' || m.concurrency_key AS ck, m.concurrency_limit AS cl,
                      'r:' || m.rate_key AS rk, m.rate_interval AS ri
          FROM {m} m
          WHERE m.queue_id = p_queues[qi] AND {LIMIT_GROUP} = g AND {ready}
          ORDER BY m.priority DESC, m.id LIMIT {KEY_SCAN}
      LOOP
        EXIT WHEN taken >= p_n;
        CONTINUE WHEN r.mid = ANY(mine);  -- this transaction's own locks are not skipped
        -- The key's messages share its concurrency key (or, without one, its rate key).
        EXIT WHEN r.ck = ANY(blocked) OR (r.ck IS NULL AND r.rk = ANY(blocked));
        CONTINUE WHEN r.rk = ANY(blocked);
        IF r.ck IS NOT NULL THEN
          INSERT INTO {state} (key) VALUES (r.ck) ON CONFLICT DO NOTHING;
          -- Locked until this claim commits: the next claimant of the key, waiting for it or
          -- skipping it, reads the leases this claim writes.
          SELECT s.holders INTO holding FROM {state} s WHERE s.key = r.ck
             FOR UPDATE SKIP LOCKED;
          IF NOT FOUND THEN
            blocked := blocked || r.ck;
            soonest := least(soonest, 0.05);
            CONTINUE;
          END IF;
          SELECT coalesce(array_agg(h.id), '{{}}') INTO holding FROM unnest(holding) AS h(id)
           WHERE h.id = ANY(mine)
              OR EXISTS (SELECT 1 FROM {m} m WHERE m.id = h.id AND {live});
          IF cardinality(holding) >= r.cl THEN
            blocked := blocked || r.ck;
            CONTINUE;
          END IF;
        END IF;
        IF r.rk IS NOT NULL THEN
          INSERT INTO {state} (key) VALUES (r.rk) ON CONFLICT DO NOTHING;
          SELECT s.next_at INTO next_start FROM {state} s WHERE s.key = r.rk
             FOR UPDATE SKIP LOCKED;
          IF NOT FOUND THEN
            blocked := blocked || r.rk;
            soonest := least(soonest, r.ri);
            CONTINUE;
          END IF;
          IF next_start > now() THEN
            blocked := blocked || r.rk;
            soonest := least(soonest, extract(epoch FROM next_start - now())::double precision);
            CONTINUE;
          END IF;
        END IF;
        PERFORM 1 FROM {m} m WHERE m.id = r.mid AND m.visible AND m.visible_at <= now()
          FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        IF r.ck IS NOT NULL THEN
          UPDATE {state} s SET holders = holding || r.mid, touched_at = now()
           WHERE s.key = r.ck;
        END IF;
        IF r.rk IS NOT NULL THEN
          -- A token bucket of one token, like Celery's own rate_limit: starts are spaced
          -- evenly, so no window of the period holds more than the rate (one more at its edge).
          UPDATE {state} s
             SET next_at = greatest(coalesce(s.next_at, now()), now())
                           + make_interval(secs => r.ri),
                 touched_at = now()
           WHERE s.key = r.rk;
          blocked := blocked || r.rk;
          soonest := least(soonest, r.ri);
        END IF;
        mine := mine || r.mid;
        taken := taken + 1;
        id := r.mid;
        wait := NULL;
        queue := NULL;
        grp := NULL;
        RETURN NEXT;
      END LOOP;
    END LOOP;
    IF g IS NOT NULL THEN
      -- Where this queue's rotation stopped: the next claim starts after it.
      id := NULL;
      wait := NULL;
      queue := p_queues[qi];
      grp := g;
      RETURN NEXT;
    END IF;
  END LOOP;
  IF soonest IS NOT NULL THEN
    id := NULL;
    wait := soonest;
    queue := NULL;
    grp := NULL;
    RETURN NEXT;
  END IF;
END
$fn$;
"""


def upgrade() -> None:
    settings = MigrationSettings()
    schema = settings.schema_name
    q = f'"{schema}"'
    for name, type_ in _COLUMNS:
        op.add_column("kombu_message", sa.Column(name, type_), schema=schema)
    op.create_index(
        "ix_kombu_message_fair",
        "kombu_message",
        ["queue_id", sa.text("priority DESC"), sa.text(TENANT_GROUP.replace("m.", "")), "id"],
        schema=schema,
        postgresql_where=sa.text(UNLIMITED.replace("m.", "")),
    )
    op.create_index(
        "ix_kombu_message_limited",
        "kombu_message",
        ["queue_id", sa.text(LIMIT_GROUP.replace("m.", "")), sa.text("priority DESC"), "id"],
        schema=schema,
        postgresql_where=sa.text(LIMITED.replace("m.", "")),
    )
    op.create_table(
        TENANT_WEIGHT_TABLE,
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.CheckConstraint("weight BETWEEN 1 AND 1000", name="ck_pgcelery_tenant_weight_range"),
        sa.PrimaryKeyConstraint("tenant_id"),
        schema=schema,
    )
    op.create_table(
        LIMIT_STATE_TABLE,
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column(
            "holders",
            sa.ARRAY(sa.BigInteger()),
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
        sa.PrimaryKeyConstraint("key"),
        schema=schema,
    )
    op.create_index(
        "ix_pgcelery_limit_state_touched_at", LIMIT_STATE_TABLE, ["touched_at"], schema=schema
    )
    op.execute(_fair_function(q))
    op.execute(_in_order_function(q))
    op.execute(_limited_function(q))
    op.execute(
        f"""
CREATE FUNCTION {q}.pgcelery_limit_freed() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  PERFORM pg_notify('{MESSAGE_CHANNEL}', OLD.queue_id::text);
  RETURN NULL;
END
$fn$;
CREATE TRIGGER pgcelery_limit_freed AFTER DELETE ON {q}.kombu_message
  FOR EACH ROW WHEN (OLD.concurrency_key IS NOT NULL)
  EXECUTE FUNCTION {q}.pgcelery_limit_freed();
"""
    )
    for rights, role in settings.roles().items():
        grant(LIMIT_RIGHTS[rights], to=role)


def downgrade() -> None:
    schema = MigrationSettings().schema_name
    q = f'"{schema}"'
    op.execute(
        f"DROP TRIGGER pgcelery_limit_freed ON {q}.kombu_message;\n"
        f"DROP FUNCTION {q}.pgcelery_limit_freed();\n"
        f"DROP FUNCTION {q}.pgcelery_claim_limited(integer[], text[], bigint[], integer);\n"
        f"DROP FUNCTION {q}.pgcelery_claim_fair(integer, integer, text, integer);\n"
        f"DROP FUNCTION {q}.pgcelery_claim_in_order(integer, integer);"
    )
    op.drop_index("ix_pgcelery_limit_state_touched_at", LIMIT_STATE_TABLE, schema=schema)
    op.drop_table(LIMIT_STATE_TABLE, schema=schema)
    op.drop_table(TENANT_WEIGHT_TABLE, schema=schema)
    op.drop_index("ix_kombu_message_limited", "kombu_message", schema=schema)
    op.drop_index("ix_kombu_message_fair", "kombu_message", schema=schema)
    for name, _ in reversed(_COLUMNS):
        op.drop_column("kombu_message", name, schema=schema)
