"""Bounded state: a soak of remote control clients, event receivers and killed workers leaves
every table's row count where it started, pruned by a worker without beat."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack

import psycopg
import pytest
from celery import Celery

from pgcelery import create_app
from pgcelery.settings import Settings
from tests.support.events import Collector
from tests.support.postgres import libpq
from tests.support.short_lifetimes import shorten_lifetimes
from tests.support.waiting import wait_until
from tests.support.workers import ROOT, WorkerProcess, worker_process

TABLES = (
    "kombu_queue",
    "kombu_message",
    "pgcelery_binding",
    "pgcelery_broadcast",
    "pgcelery_worker",
    "pgcelery_beat",
    "celery_taskmeta",
    "celery_tasksetmeta",
)
WORKER = ["celery", "-A", "tests.support.pruning_app", "worker", "-P", "solo", "-c", "1"]
#: Every worker of the soak: a heartbeat every 0.3 s, so a killed one is dead after 3 s.
FAST = {"PGCELERY_WORKER_HEARTBEAT_INTERVAL": "0.3", "PGCELERY_LOG_FORMAT": "text"}
#: The one that lives: prunes every second and keeps results 5 s.
KEEPER = {**FAST, "PGCELERY_PRUNE_INTERVAL": "1", "PGCELERY_RESULT_EXPIRES": "5"}
PINGS, CLI_PINGS, RECEIVERS, KILLED, AT_ONCE = 100, 5, 5, 20, 5
PONG = {"keeper@soak": {"ok": "pong"}}


def _counts(url: str) -> dict[str, int]:
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute(
            "SELECT " + ", ".join(f"(SELECT count(*) FROM {t})" for t in TABLES)
        ).fetchone()
    assert row is not None
    return dict(zip(TABLES, (int(n) for n in row), strict=True))


def _created(url: str) -> dict[str, int]:
    """How many queue rows and broadcasts were ever made (their sequences' positions)."""
    with psycopg.connect(libpq(url)) as conn:
        used = "(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {})"
        row = conn.execute(
            f"SELECT {used.format('queue_id_sequence')}, {used.format('pgcelery_broadcast_id_seq')}"
        ).fetchone()
    assert row is not None
    return {"queue rows": int(row[0]), "broadcasts": int(row[1])}


def _has(url: str, query: str, value: str) -> bool:
    with psycopg.connect(libpq(url)) as conn:
        return conn.execute(query, (value,)).fetchone() is not None


@pytest.fixture
def client(database_url: str) -> Iterator[Celery]:
    settings = Settings(DATABASE_URL=database_url, PGCELERY_METRICS_ENABLED=False)
    app = shorten_lifetimes(
        create_app("soak-client", include=["tests.support.tasks"], settings=settings)
    )
    yield app
    app.close()


def _cli_ping(url: str, node: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": f"{ROOT}:{ROOT / 'backend'}"}
    env["PATH"] = f"{os.path.dirname(sys.executable)}:{env.get('PATH', '')}"
    argv = ["celery", "-A", "tests.support.pruning_app", "inspect", "ping", "-t", "10", "-d", node]
    return subprocess.Popen(
        argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _start_and_kill(stack: ExitStack, url: str, first: int) -> None:
    """Start ``AT_ONCE`` workers, wait until each beats and listens for remote control, SIGKILL."""
    doomed = []
    for n in range(first, first + AT_ONCE):
        name = f"doomed{n}@soak"
        process = WorkerProcess([*WORKER, "-n", name, "-l", "INFO"], {"DATABASE_URL": url, **FAST})
        stack.callback(process.stop)
        doomed.append((name, process))
    for name, process in doomed:
        wait_until(
            lambda n=name: (
                _has(url, "SELECT 1 FROM pgcelery_worker WHERE hostname = %s", n)
                and _has(
                    url, "SELECT 1 FROM pgcelery_binding WHERE queue = %s", f"{n}.celery.pidbox"
                )
            ),
            timeout=120,
            interval=0.1,
            what=f"{name} to beat and listen ({process.output()[-2000:]})",
        )
    for _, process in doomed:
        process.signal(signal.SIGKILL)
        process.proc.wait(30)


def test_a_soak_leaves_every_row_count_flat(client: Celery, database_url: str) -> None:
    url = database_url
    with ExitStack() as stack:
        keeper = stack.enter_context(
            worker_process(
                url,
                [
                    *WORKER,
                    "-n",
                    "keeper@soak",
                    "--without-mingle",
                    "--without-gossip",
                    "-l",
                    "INFO",
                ],
                KEEPER,
            )
        )
        wait_until(
            lambda: _has(
                url, "SELECT 1 FROM pgcelery_binding WHERE queue = %s", "keeper@soak.celery.pidbox"
            ),
            timeout=120,
            interval=0.1,
            what=f"the keeper to listen for remote control ({keeper.output()[-2000:]})",
        )
        before, made_before = _counts(url), _created(url)
        assert before["pgcelery_worker"] == 1
        started = time.monotonic()

        # Results that expire, without beat.
        results = [client.send_task("tests.add", (n, n)) for n in range(10)]
        assert [r.get(timeout=60) for r in results] == [2 * n for n in range(10)]

        # 100 remote control clients: a few real `celery inspect ping` processes, and as many
        # mailboxes as the other processes would have had, each with a reply queue of its own.
        clis = [_cli_ping(url, "keeper@soak") for _ in range(CLI_PINGS)]
        with client.connection_for_write() as conn:
            mailboxes = [client.control.mailbox(conn) for _ in range(PINGS - CLI_PINGS)]
            for mailbox in mailboxes:
                assert mailbox.call(["keeper@soak"], "ping", timeout=10) == [PONG]
        for cli in clis:
            out, _ = cli.communicate(timeout=120)
            assert cli.returncode == 0, out
            assert "pong" in out, out

        # Event receivers, as each Flower start makes one.
        for _ in range(RECEIVERS):
            Collector(client).stop()

        # Killed workers: each leaves its heartbeat row and its pidbox queue and binding (Celery
        # runs no mingle or gossip on a transport other than amqp and redis).
        for first in range(0, KILLED, AT_ONCE):
            _start_and_kill(stack, url, first)
        soaked = time.monotonic() - started

        after: dict[str, int] = {}

        def flat() -> bool:
            after.update(_counts(url))
            return after == before

        with contextlib.suppress(AssertionError):
            wait_until(flat, timeout=60, interval=0.5, what="row counts back where they started")
        made = {k: v - made_before[k] for k, v in _created(url).items()}
        figures = {t: f"{before[t]} -> {after[t]}" for t in TABLES}
        print(f"\nsoak {soaked:.0f} s, made {made}; rows before -> after: {figures}")
        assert after == before, f"row counts (before -> after): {figures}; made during soak: {made}"
        # A reply queue per ping, an event queue per receiver, a pidbox queue per killed worker:
        # the soak did make the rows it had to get rid of.
        assert made["queue rows"] >= PINGS + RECEIVERS + KILLED, made
        assert made["broadcasts"] >= PINGS, made

        # The keeper's own queues survived every pass: it still answers.
        assert client.control.inspect(["keeper@soak"], timeout=10).ping() == PONG
        assert "pgcelery.prune.ran" in keeper.output()
