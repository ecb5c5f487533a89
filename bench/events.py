"""The cost of worker events, measured in one worker (run as ``python -m bench.events``).

Separate runs of a whole configuration differ by more than the 10% budget on a small shared
machine, so here the phases share one worker process started with ``-E`` and alternate: no
receiver, then a receiver attached (a process counting every event, as Flower would), the
order swapped every round so that drift in the host's speed falls on both alike. Without a
receiver, pgcelery builds and sends no task events (no event traffic); Redis publishes them
to nobody. Each phase: end-to-end throughput of BENCH_EVENT_TASKS no-op tasks with results,
and the CPU time of every process per task. Prints one JSON object: per phase, the rounds.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TASKS = int(os.environ.get("BENCH_EVENT_TASKS", "2000"))
ROUNDS = int(os.environ.get("BENCH_EVENT_PHASE_ROUNDS", "6"))
PHASES = ("none", "receiver")

#: An event consumer like Flower's: counts every event; says "seen" once events arrive.
EVENT_SINK = """
import signal, sys
from bench.apps import app
seen = [0]
def count(event):
    seen[0] += 1
    if seen[0] == 1:
        print("seen", flush=True)
signal.signal(signal.SIGINT, signal.default_int_handler)
try:
    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": count})
        print("ready", flush=True)
        receiver.capture(limit=None, timeout=None, wakeup=False)
except KeyboardInterrupt:
    pass  # leaving the with block unbinds the receiver's queue at once
"""


class Receiver:
    """The event sink in its own process, bound until stopped."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'backend'}"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", EVENT_SINK], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("the event receiver did not start")

    def wait_for_events(self, send: Any) -> None:
        """Send tasks until the receiver has seen an event (the worker noticed the binding)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            send()
            ready, _, _ = select.select([self.proc.stdout], [], [], 0)
            if ready and self.proc.stdout.readline().strip() == "seen":
                return
        raise SystemExit("no event reached the receiver within 60 s")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _phase(noop: Any, workers: Any, phase: str, server: str) -> dict[str, Any]:
    from bench.measure import CpuClock

    receiver = None
    try:
        if phase == "receiver":
            receiver = Receiver()
            receiver.wait_for_events(lambda: noop.delay().get(timeout=60))
            os.environ["BENCH_RECEIVER_PID"] = str(receiver.proc.pid)
        for _ in range(50):
            noop.delay().get(timeout=60)  # settled: the worker's view of the bindings is fresh
        clock = CpuClock(workers, server)
        started = time.perf_counter()
        for result in [noop.delay() for _ in range(TASKS)]:
            result.get(timeout=600)
        elapsed = time.perf_counter() - started
        spent = clock.spent_ms_per(TASKS)
    finally:
        os.environ.pop("BENCH_RECEIVER_PID", None)
        if receiver is not None:
            receiver.stop()
    found: dict[str, Any] = {"e2e_per_s": TASKS / elapsed, "cpu_ms": sum(spent.values())}
    found.update({f"cpu_{part}_ms": ms for part, ms in spent.items()})
    return found


def main() -> None:
    os.environ["BENCH_EVENTS"] = "1"  # the worker runs with -E (worker_send_task_events)
    from bench.apps import noop
    from bench.measure import Workers

    config = os.environ["BENCH_CONFIG"]
    server = "redis-server" if config == "redis" else "postgres"
    results: dict[str, list[dict[str, Any]]] = {phase: [] for phase in PHASES}
    workers = Workers(1)
    try:
        noop.delay().get(timeout=120)
        for _ in range(20):
            noop.delay().get(timeout=60)
        for round_no in range(ROUNDS):
            shift = round_no % len(PHASES)
            for phase in PHASES[shift:] + PHASES[:shift]:
                results[phase].append(_phase(noop, workers, phase, server))
    finally:
        workers.stop()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
