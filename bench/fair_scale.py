"""The fair claim at scale: 1,000,000 waiting messages across 10,000 tenants (issue 18).

``python -m bench.fair_scale`` fills a fresh database straight with SQL (``FAIR_MESSAGES``,
``FAIR_TENANTS``), then times real claims through pgcelery's channel, fair and in order,
batches of 1 and of 10, each claim acking the previous one's messages as a worker does; and
prints the plans of the statements the fair claim runs, so "still an index scan" is read off
them. Not part of ``make test``: it takes a few minutes.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import psycopg

from bench import environment

MESSAGES = int(os.environ.get("FAIR_MESSAGES", "1000000"))
TENANTS = int(os.environ.get("FAIR_TENANTS", "10000"))
CLAIMS = int(os.environ.get("FAIR_CLAIMS", "300"))

_READY = "m.visible AND m.visible_at <= now() AND m.concurrency_key IS NULL AND m.rate_key IS NULL"
#: The statements a claim runs (pgcelery_claim_fair's two, and the gate of the limited lane),
#: with the cursor at a tenant in the middle of the range.
PLANS = {
    "fair: the first look (top priority, its first group, the next group)": (
        "SELECT t.priority, t.grp, x.grp FROM (SELECT m.priority,"
        " coalesce(m.tenant_id, '') AS grp FROM kombu_message m"
        f" WHERE m.queue_id = %(q)s AND {_READY}"
        " ORDER BY m.priority DESC, coalesce(m.tenant_id, '') LIMIT 1) t"
        " LEFT JOIN LATERAL (SELECT coalesce(m.tenant_id, '') AS grp FROM kombu_message m"
        " WHERE m.queue_id = %(q)s AND m.priority = t.priority"
        f" AND coalesce(m.tenant_id, '') > %(g)s AND {_READY}"
        " ORDER BY coalesce(m.tenant_id, '') LIMIT 1) x ON true"
    ),
    "fair: a group's turn": (
        "SELECT m.id FROM kombu_message m WHERE m.queue_id = %(q)s"
        f" AND m.priority = 0 AND coalesce(m.tenant_id, '') = %(g)s AND {_READY}"
        " AND m.id <> ALL('{}'::bigint[]) ORDER BY m.id LIMIT 1 FOR UPDATE SKIP LOCKED"
    ),
    "limited lane gate (no limited message)": (
        "SELECT EXISTS (SELECT 1 FROM kombu_message e WHERE e.queue_id = ANY(%(qs)s)"
        " AND (e.concurrency_key IS NOT NULL OR e.rate_key IS NOT NULL))"
    ),
}


def _fill(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO kombu_queue (id, name) VALUES (nextval('queue_id_sequence'), 'celery')"
        )
        queue = conn.execute("SELECT id FROM kombu_queue WHERE name = 'celery'").fetchone()
        assert queue is not None
        conn.execute(
            "INSERT INTO kombu_message (id, visible, timestamp, payload, version, queue_id,"
            " priority, visible_at, tenant_id)"
            " SELECT nextval('message_id_sequence'), true, now(), %s, 1, %s, 0, now(),"
            " '00000000-0000-4000-8000-' || lpad((i %% %s)::text, 12, '0')"
            " FROM generate_series(1, %s) AS i",
            ('{"body": "e30=", "headers": {}, "properties": {}}', queue[0], TENANTS, MESSAGES),
        )
        conn.execute("VACUUM ANALYZE kombu_message")
        return int(queue[0])


def _time_claims(url: str, fair: bool, batch: int) -> list[float]:
    os.environ.update(DATABASE_URL=url, PGCELERY_FAIR_TENANTS="true" if fair else "false")
    from pgcelery import create_app
    from pgcelery.broker.delivery import parse_tag

    app = create_app("fair-scale")
    took: list[float] = []
    with app.connection_for_write() as conn:
        channel: Any = conn.default_channel
        channel.fair_tenants = fair
        for _ in range(CLAIMS):
            start = time.perf_counter()
            claimed, _ = channel._claim(["celery"], batch)
            took.append(time.perf_counter() - start)
            for _, payload in claimed:  # acked: they ride along with the next claim
                parsed = parse_tag(payload["properties"]["delivery_tag"])
                if parsed is not None:
                    channel._acks.add(*parsed)
    app.close()
    return took


def _plans(url: str, queue: int) -> str:
    out = []
    with psycopg.connect(url, autocommit=True) as conn:
        params = {"q": queue, "qs": [queue], "g": "00000000-0000-4000-8000-000000005000"}
        for what, query in PLANS.items():
            rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + query, params)
            out.append(f"-- {what}\n" + "\n".join(r[0] for r in rows))
    return "\n\n".join(out)


def main() -> None:
    from pgcelery.schema import migrations

    with environment.postgres_server() as admin:
        url = environment.fresh_database(admin)
        try:
            migrations.upgrade(url)
            print(f"filling {MESSAGES:,} messages across {TENANTS:,} tenants ...", flush=True)
            queue = _fill(url)
            for batch in (1, 10):
                for fair in (True, False, True, False):  # alternating: medians of two each
                    took = _time_claims(url, fair, batch)
                    label = "fair" if fair else "in order"
                    print(
                        f"batch {batch:>2}, {label:>8}: claim median"
                        f" {statistics.median(took) * 1000:.3f} ms,"
                        f" p95 {sorted(took)[int(len(took) * 0.95)] * 1000:.3f} ms",
                        flush=True,
                    )
            print(_plans(url, queue))
        finally:
            environment.drop_database(admin, url)


if __name__ == "__main__":
    main()
