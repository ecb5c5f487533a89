"""The faults ``make chaos`` injects, one function per scenario.

Each runs during the fault phase, until ``until`` (a ``time.monotonic()`` deadline), and
returns when its fault *ended* (wall clock) and what it did. Recovery is measured from that
moment: the kill itself for a single SIGKILL, the last kill or termination for the storms, the
release, commit or restart for the others.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from bench.chaos_load import Producer
from bench.chaos_server import PrivateServer, connect
from bench.chaos_workers import Fleet


@dataclass
class FaultContext:
    server: PrivateServer
    url: str
    fleet: Fleet
    producer: Producer
    base_rate: float
    overload_rate: float
    kill_every: float = 3.0
    storm_every: float = 0.5
    restart_down: float = 3.0
    readers: int = 3
    reader_hold: float = 5.0


Fault = Callable[[FaultContext, float], tuple[float, str]]


def _sleep_until(until: float) -> None:
    time.sleep(max(0.0, until - time.monotonic()))


def baseline(ctx: FaultContext, until: float) -> tuple[float, str]:
    """No fault at all: what the other rows compare with (not in the default set)."""
    _sleep_until(until)
    return time.time(), "none"


def worker_sigkill(ctx: FaultContext, until: float) -> tuple[float, str]:
    """SIGKILL the prefork worker (parent and children) mid-load; restarted 1 s later."""
    slot = next((s for s in ctx.fleet.slots if s.pool == "prefork"), ctx.fleet.slots[0])
    running = ctx.fleet.kill_mid_task(slot, patience=5.0)
    ended = time.time()
    time.sleep(1.0)
    ctx.fleet.restart(slot)
    _sleep_until(until)
    return ended, f"killed {slot.name} running {running}"


def repeated_kills(ctx: FaultContext, until: float) -> tuple[float, str]:
    """Every ``kill_every`` seconds SIGKILL the next worker in turn and start it again at once."""
    kills = running = 0
    ended = time.time()
    while time.monotonic() + ctx.kill_every <= until:
        slot = ctx.fleet.slots[kills % len(ctx.fleet.slots)]
        running += ctx.fleet.kill_mid_task(slot, patience=1.0)
        ended = time.time()
        ctx.fleet.restart(slot)
        kills += 1
        time.sleep(ctx.kill_every)
    _sleep_until(until)
    return ended, f"{kills} kills, {running} running"


def terminate_storm(ctx: FaultContext, until: float) -> tuple[float, str]:
    """Every ``storm_every`` seconds terminate every backend of the database but the harness's."""
    terminated = rounds = 0
    ended = time.time()
    with connect(ctx.url) as conn:
        while time.monotonic() < until:
            row = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND backend_type = 'client backend' AND application_name <> %s",
                (conn.info.parameter_status("application_name"),),
            ).fetchone()
            terminated += int(row[0]) if row else 0
            rounds += 1
            ended = time.time()
            time.sleep(ctx.storm_every)
    return ended, f"{terminated} backends in {rounds} rounds"


def pool_exhaustion(ctx: FaultContext, until: float) -> tuple[float, str]:
    """Take every connection slot the server has left, hold them, then let them all go."""
    held: list[psycopg.Connection[Any]] = []
    refused = "never refused"
    try:
        while time.monotonic() < until:
            try:
                held.append(connect(ctx.url, timeout=2))
            except psycopg.OperationalError as exc:
                reasons = ("too many clients", "slots are reserved")
                found = [r for r in reasons if r in str(exc)]
                refused = f"then {found[0] if found else 'refused'}"
                break
        _sleep_until(until)
    finally:
        for conn in held:
            conn.close()
    return time.time(), f"held {len(held)} connections, {refused}"


def postgres_restart(ctx: FaultContext, until: float) -> tuple[float, str]:
    """Fast shutdown of the server, ``restart_down`` seconds down, start again."""
    started = time.monotonic()
    ctx.server.restart(ctx.restart_down)
    ended = time.time()
    down = time.monotonic() - started
    _sleep_until(until)
    return ended, f"down {down:.1f} s"


def idle_in_transaction(ctx: FaultContext, until: float) -> tuple[float, str]:
    """A session that took a transaction id and sits idle, pinning the xmin horizon."""
    with connect(ctx.url, autocommit=False) as conn:
        row = conn.execute("SELECT txid_current()").fetchone()
        _sleep_until(until)
        conn.commit()
    return time.time(), f"held xid {row[0] if row else '?'}"


def repeatable_read_readers(ctx: FaultContext, until: float) -> tuple[float, str]:
    """Readers re-reading the hot tables in ``REPEATABLE READ`` snapshots held for seconds."""
    reads = [0] * ctx.readers

    def read(k: int) -> None:
        time.sleep(k * ctx.reader_hold / ctx.readers)  # staggered: a snapshot is always open
        with connect(ctx.url, autocommit=False) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            while time.monotonic() < until:
                hold_until = min(until, time.monotonic() + ctx.reader_hold)
                while time.monotonic() < hold_until:
                    conn.execute("SELECT count(*) FROM kombu_message").fetchone()
                    conn.execute("SELECT count(*) FROM celery_taskmeta").fetchone()
                    reads[k] += 1
                    time.sleep(0.2)
                conn.commit()

    threads = [threading.Thread(target=read, args=(k,)) for k in range(ctx.readers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.time(), f"{ctx.readers} readers, {sum(reads)} snapshot reads"


def overload(ctx: FaultContext, until: float) -> tuple[float, str]:
    """The producer at ``overload_rate`` (1.5x the measured capacity), then back to base."""
    ctx.producer.rate = ctx.overload_rate
    try:
        _sleep_until(until)
    finally:
        ctx.producer.rate = ctx.base_rate
    return time.time(), f"{ctx.overload_rate:.0f}/s"


SCENARIOS: dict[str, Fault] = {
    "baseline": baseline,
    "worker-sigkill": worker_sigkill,
    "repeated-kills": repeated_kills,
    "terminate-storm": terminate_storm,
    "pool-exhaustion": pool_exhaustion,
    "postgres-restart": postgres_restart,
    "idle-in-transaction": idle_in_transaction,
    "repeatable-read": repeatable_read_readers,
    "overload": overload,
}
