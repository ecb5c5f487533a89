"""Beat processes for the acceptance tests, and a record of every run they send.

``record_sends`` installs a trigger on ``kombu_message`` that notes, in the sending transaction,
which database session inserted each message and whether that session held the beat leader lock
at that moment. A row commits only with the message it describes, so ``test_sends`` is exactly
the committed sends: two leaders at once, or a send from a session without the lock, shows up
there rather than in anybody's logs.
"""

from __future__ import annotations

import psycopg

from pgcelery.scheduling.beat import leader_lock_key
from tests.support.broker_tasks import RUNS_TABLE
from tests.support.postgres import libpq

BEAT = ["celery", "-A", "tests.support.beat_app", "beat", "-S", "pgcelery.beat:PgScheduler"]
BEAT += ["-l", "INFO"]
WORKER = ["celery", "-A", "tests.support.app", "worker", "-P", "solo", "-c", "1", "-l", "WARNING"]
EVERY_SECOND = "tests.every_second"  # the entry tests.support.beat_app adds

#: The advisory lock of the leader, as pg_locks shows a bigint key.
_HOLDS_LEADER_LOCK = (
    "l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
    " AND ((l.classid::bigint << 32) | l.objid::bigint) = {key}"
)

_SENDS = """
CREATE TABLE test_sends (
    task_id text NOT NULL, backend_pid int NOT NULL, application_name text NOT NULL,
    held_lock boolean NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION test_record_send() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO test_sends (task_id, backend_pid, application_name, held_lock)
    SELECT NEW.payload::json -> 'headers' ->> 'id', pg_backend_pid(),
        current_setting('application_name'),
        EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = pg_backend_pid() AND {holds});
    RETURN NEW;
END $$;
CREATE TRIGGER test_record_send AFTER INSERT ON kombu_message
    FOR EACH ROW EXECUTE FUNCTION test_record_send();
"""


def scalar(url: str, query: str, params: tuple[object, ...] = ()) -> object:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def record_sends(url: str) -> None:
    """Create ``test_runs`` (what the worker ran) and ``test_sends`` (what beat sent)."""
    holds = _HOLDS_LEADER_LOCK.format(key=leader_lock_key())
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute(RUNS_TABLE)
        conn.execute(_SENDS.format(holds=holds))


def runs(url: str) -> int:
    """How many beat runs the worker has finished."""
    return int(str(scalar(url, "SELECT count(*) FROM test_runs WHERE label = 'beat'")))


def sends(url: str, beat_pid: int | None = None) -> int:
    """How many runs were sent (by the beat process ``beat_pid`` only, if given)."""
    if beat_pid is None:
        return int(str(scalar(url, "SELECT count(*) FROM test_sends")))
    query = "SELECT count(*) FROM test_sends WHERE application_name LIKE %s"
    return int(str(scalar(url, query, (f"pgcelery-beat:%:{beat_pid}",))))


def leader_pid(url: str) -> int | None:
    """The OS pid of the beat process whose session holds the leader lock."""
    name = scalar(
        url,
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        f" WHERE {_HOLDS_LEADER_LOCK.format(key=leader_lock_key())}",
    )
    return int(str(name).rsplit(":", 1)[1]) if name else None
