"""What the dashboard shows, read straight from pgcelery's tables with indexed queries.

Results are listed newest first with keyset pagination on ``(date_done, id)``: a page is an
index range scan however many million results the table holds (revision 0006's indexes), and
"next page" never re-reads the pages before it. Pending tasks have no result row yet; they are
read from the broker's message table.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pgcelery import connections, dsn
from pgcelery.broker import dead_letters
from pgcelery.observability import backlog
from pgcelery.observability.redaction import scrub
from pgcelery.schema.names import TENANT_OF_KWARGS, Names
from pgcelery.settings import Settings

#: Broker-internal queues (remote control, events) that are not task queues.
INTERNAL_QUEUE_PATTERNS = ("%.pidbox", "celeryev.%", "celery@%")
PAGE_SIZE = 50
#: Parts of a stored failure (Celery's JSON ``{"exc_type": …, "exc_message": …}``), read with
#: expressions that never raise on bytes that are not JSON.
EXCEPTION_TYPE = 'substring(encode(result, \'escape\') from \'"exc_type": *"([^"]+)"\')'
EXCEPTION_MESSAGE = (
    'substring(encode(result, \'escape\') from \'"exc_message": *(\\[[^]]{0,250}\\]?|"[^"]*")\')'
)
#: The task id of a broker message, read from its JSON payload.
MESSAGE_TASK_ID = "(m.payload::jsonb -> 'headers' ->> 'id')"


@dataclass(frozen=True)
class QueueRow:
    name: str
    pending: int
    delayed: int
    in_flight: int
    oldest_pending_age: float | None
    done_last_hour: int
    paused: bool = False


@dataclass(frozen=True)
class TaskRow:
    task_id: str
    name: str | None
    status: str
    date_done: datetime | None
    worker: str | None
    queue: str | None
    retries: int | None
    row_id: int


@dataclass(frozen=True)
class TaskPage:
    rows: list[TaskRow]
    next_cursor: str | None


@dataclass
class TaskDetail:
    task_id: str
    status: str
    name: str | None = None
    args: Any = None
    kwargs: Any = None
    result: Any = None
    traceback: str | None = None
    date_done: datetime | None = None
    worker: str | None = None
    queue: str | None = None
    retries: int | None = None
    pending_in: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def decode_json(value: Any) -> Any:
    """A stored JSON column (bytes) as data; text that is not JSON is shown as it is."""
    if value is None:
        return None
    raw = bytes(value).decode("utf-8", "replace") if not isinstance(value, str) else value
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def encode_cursor(row: TaskRow) -> str | None:
    if row.date_done is None:
        return None
    return f"{row.date_done.isoformat()}_{row.row_id}"


def decode_cursor(cursor: str) -> tuple[datetime, int] | None:
    stamp, _, row_id = cursor.rpartition("_")
    try:
        return datetime.fromisoformat(stamp), int(row_id)
    except ValueError:
        return None


class Queries:
    """The dashboard's reads (and the actions' writes) on one pooled connection each."""

    def __init__(self, settings: Settings) -> None:
        self.names = Names(settings.schema_name)
        self.conninfo = dsn.libpq_url(settings.sync_url)
        self.transaction_pooling = not settings.listen

    def pool(self) -> Any:
        return connections.pool(self.conninfo, transaction_pooling=self.transaction_pooling)

    def fetch(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.pool().connection() as conn:
            return list(conn.execute(query, params).fetchall())

    def queues(self) -> list[QueueRow]:
        n = self.names
        skip = " AND ".join("q.name NOT LIKE %s" for _ in INTERNAL_QUEUE_PATTERNS)
        rows = self.fetch(
            "SELECT q.name,"
            " count(m.id) FILTER (WHERE m.visible AND m.visible_at <= now()),"
            " count(m.id) FILTER (WHERE m.lease_token IS NULL AND m.visible_at > now()),"
            " count(m.id) FILTER (WHERE m.lease_token IS NOT NULL AND m.visible_at > now()),"
            " extract(epoch FROM (now() AT TIME ZONE 'UTC')"
            "   - min(m.timestamp) FILTER (WHERE m.visible AND m.visible_at <= now())),"
            f" EXISTS (SELECT 1 FROM {n.pause} p WHERE p.queue = q.name)"
            f" FROM {n.queue} q LEFT JOIN {n.message} m ON m.queue_id = q.id"
            f" WHERE {skip} GROUP BY q.name ORDER BY q.name",
            INTERNAL_QUEUE_PATTERNS,
        )
        done = dict(
            self.fetch(
                f"SELECT queue, count(*) FROM {n.task}"
                " WHERE date_done >= (now() AT TIME ZONE 'UTC') - interval '1 hour'"
                " AND queue IS NOT NULL GROUP BY queue"
            )
        )
        return [
            QueueRow(
                str(name),
                int(ready),
                int(delayed),
                int(in_flight),
                None if age is None else max(0.0, float(age)),
                int(done.get(name, 0)),
                bool(paused),
            )
            for name, ready, delayed, in_flight, age, paused in rows
        ]

    def tenant_backlog(self) -> dict[str, list[backlog.TenantBacklog]]:
        """Per queue name, its biggest tenant backlogs (global tasks as one group)."""
        return backlog.by_queue(backlog.tenant_backlog(self.fetch, self.names))

    def limit_waits(self) -> dict[str, list[backlog.LimitWait]]:
        """Per queue name, the limited tasks whose ready messages no worker may start now."""
        return backlog.by_queue(backlog.limit_waits(self.fetch, self.names))

    def throughput(self) -> list[tuple[int, str, int]]:
        """(minutes ago 0 to 59, state, count) of results finished in the last hour."""
        rows = self.fetch(
            "SELECT floor(extract(epoch FROM (now() AT TIME ZONE 'UTC') - date_done) / 60)::int,"
            f" status, count(*) FROM {self.names.task}"
            " WHERE date_done >= (now() AT TIME ZONE 'UTC') - interval '1 hour'"
            " GROUP BY 1, 2"
        )
        return [(min(59, max(0, int(m))), str(s), int(c)) for m, s, c in rows]

    def workers(self) -> list[dict[str, Any]]:
        with self.pool().connection() as conn:
            cursor = conn.execute(
                "SELECT hostname, pid, pool, concurrency, queues, tasks_in_flight, processed,"
                " version, started_at, last_seen, extract(epoch FROM now() - last_seen) AS age"
                f" FROM {self.names.worker} ORDER BY hostname"
            )
            columns = [c.name for c in cursor.description or ()]
            return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]

    def tasks(
        self,
        *,
        state: str | None = None,
        name: str | None = None,
        tenant: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: str | None = None,
        limit: int = PAGE_SIZE,
    ) -> TaskPage:
        """One page of results, newest first; every filter is a bind parameter."""
        where = ["date_done IS NOT NULL"]
        params: list[Any] = []
        if state:
            where.append("status = %s")
            params.append(state)
        if name:
            where.append("name = %s")
            params.append(name)
        if tenant:
            where.append(f"{TENANT_OF_KWARGS} = %s")
            params.append(tenant)
        if since:
            where.append("date_done >= %s")
            params.append(since)
        if until:
            where.append("date_done < %s")
            params.append(until)
        after = decode_cursor(cursor) if cursor else None
        if after:
            where.append("(date_done, id) < (%s, %s)")
            params.extend(after)
        rows = self.fetch(
            "SELECT task_id, name, status, date_done, worker, queue, retries, id"
            f" FROM {self.names.task} WHERE {' AND '.join(where)}"
            " ORDER BY date_done DESC, id DESC LIMIT %s",
            (*params, limit + 1),
        )
        found = [TaskRow(*row) for row in rows]
        more = len(found) > limit
        found = found[:limit]
        return TaskPage(found, encode_cursor(found[-1]) if more and found else None)

    def dead_letters(self) -> list[dict[str, Any]]:
        with self.pool().connection() as conn:
            return dead_letters.listed(conn, self.names)

    def failures(self, hours: int) -> list[dict[str, Any]]:
        """Failures of the last ``hours`` grouped by exception type, most frequent first."""
        rows = self.fetch(
            f"SELECT {EXCEPTION_TYPE} AS exc_type, count(*), max(date_done),"
            " (array_agg(task_id ORDER BY date_done DESC))[1],"
            " (array_agg(name ORDER BY date_done DESC))[1],"
            f" (array_agg({EXCEPTION_MESSAGE} ORDER BY date_done DESC))[1]"
            f" FROM {self.names.task} WHERE status = 'FAILURE'"
            " AND date_done >= (now() AT TIME ZONE 'UTC') - make_interval(hours => %s)"
            " GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 100",
            (hours,),
        )
        keys = ("exc_type", "count", "last_seen", "last_task_id", "last_name", "last_message")
        found = [dict(zip(keys, row, strict=True)) for row in rows]
        for group in found:
            group["last_message"] = scrub(str(group["last_message"] or ""))
        return found

    def pending(self, cursor: str | None = None, limit: int = PAGE_SIZE) -> list[dict[str, Any]]:
        """Messages waiting in the broker (no result yet), oldest first."""
        after = int(cursor) if cursor and cursor.isdigit() else 0
        rows = self.fetch(
            f"SELECT m.id, {MESSAGE_TASK_ID}, m.payload::jsonb -> 'headers' ->> 'task', q.name,"
            " extract(epoch FROM (now() AT TIME ZONE 'UTC') - m.timestamp), m.deliveries,"
            " m.lease_token IS NOT NULL AND m.visible_at > now()"
            f" FROM {self.names.message} m JOIN {self.names.queue} q ON q.id = m.queue_id"
            " WHERE m.id > %s ORDER BY m.id LIMIT %s",
            (after, limit),
        )
        keys = ("message_id", "task_id", "name", "queue", "age", "deliveries", "in_flight")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def task(self, task_id: str) -> TaskDetail | None:
        rows = self.fetch(
            "SELECT status, name, args, kwargs, result, traceback, date_done, worker, queue,"
            f" retries FROM {self.names.task} WHERE task_id = %s",
            (task_id,),
        )
        message = self.pending_message(task_id)
        if rows:
            status, name, args, kwargs, result, traceback, done, worker, queue, retries = rows[0]
            detail = TaskDetail(
                task_id,
                str(status),
                name=name,
                args=decode_json(args),
                kwargs=decode_json(kwargs),
                result=decode_json(result),
                traceback=scrub(traceback) if traceback else None,
                date_done=done,
                worker=worker,
                queue=queue,
                retries=retries,
            )
        elif message is not None:
            detail = TaskDetail(task_id, "PENDING", name=message["name"], queue=message["queue"])
            detail.args, detail.kwargs = message["args"], message["kwargs"]
        else:
            return None
        if message is not None:
            detail.pending_in = str(message["queue"])
        return detail

    def pending_message(self, task_id: str) -> dict[str, Any] | None:
        """The broker message of a task that has not run yet, with its decoded arguments."""
        rows = self.fetch(
            f"SELECT m.payload, q.name FROM {self.names.message} m"
            f" JOIN {self.names.queue} q ON q.id = m.queue_id WHERE {MESSAGE_TASK_ID} = %s"
            " LIMIT 1",
            (task_id,),
        )
        if not rows:
            return None
        payload, queue = rows[0]
        return {"queue": queue, **message_call(json.loads(payload))}


def message_call(payload: dict[str, Any]) -> dict[str, Any]:
    """Task name, args and kwargs of a kombu message (protocol 2, JSON body)."""
    headers = payload.get("headers") or {}
    body: Any = payload.get("body")
    encoding = (payload.get("properties") or {}).get("body_encoding")
    try:
        if encoding == "base64":
            body = base64.b64decode(body)
        decoded = json.loads(body)
        args, kwargs = decoded[0], decoded[1]
    except (ValueError, TypeError, IndexError, KeyError):
        args, kwargs = headers.get("argsrepr"), headers.get("kwargsrepr")
    return {"name": headers.get("task"), "args": args, "kwargs": kwargs}
