"""Real Celery worker processes for ``make chaos``: started, killed, restarted, watched.

A fleet is a fixed set of worker slots (by default two ``-P solo`` and one ``-P prefork -c 2``).
The harness may SIGKILL a slot's worker (parent and pool children, as an OOM kill of the
container would); every pid it killed is remembered, because a task that finished in a killed
process but was never acked is the one re-run at-least-once allows. A worker that exits
without the harness asking is counted and restarted, as a process supervisor would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
POOLS = {"solo": ["-P", "solo", "-c", "1"], "prefork": ["-P", "prefork", "-c", "2"]}


@dataclass
class OwnExit:
    """A worker that exited without being told to."""

    slot: str
    pid: int
    returncode: int
    at: float


@dataclass
class Slot:
    name: str
    pool: str
    log_dir: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    expected_exit: bool = False

    def argv(self) -> list[str]:
        # The celery next to this interpreter: the venv's, whether or not it is on PATH.
        celery = str(Path(sys.executable).parent / "celery")
        return [
            celery, "-A", "bench.chaos_app", "worker", *POOLS[self.pool],
            "-n", f"{self.name}@%h", "-l", self.env.get("PGCELERY_LOG_LEVEL", "WARNING"),
        ]  # fmt: skip

    def start(self) -> None:
        self.starts += 1
        self.expected_exit = False
        # One log per start: the log of a killed worker is evidence, not to be overwritten.
        log_path = self.log_dir / f"{self.name}.{self.starts}.log"
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv(), cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def pids(self) -> set[int]:
        """The worker's pid and those of its pool children (which run the tasks in prefork)."""
        if self.proc is None or self.proc.poll() is not None:
            return set()
        pids = {self.proc.pid}
        with contextlib.suppress(psutil.NoSuchProcess):
            pids |= {c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)}
        return pids


@dataclass
class Fleet:
    database_url: str
    log_dir: Path
    worker_env: dict[str, str]
    layout: list[str]
    slots: list[Slot] = field(default_factory=list)
    killed_pids: set[int] = field(default_factory=set)
    own_exits: list[OwnExit] = field(default_factory=list)
    #: Every worker process seen, pool children included: who ran a task, for the report.
    pid_names: dict[int, str] = field(default_factory=dict)
    kills: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.inflight_dir = self.log_dir / "inflight"
        self.inflight_dir.mkdir(exist_ok=True)
        env = {
            **os.environ,
            **self.worker_env,
            "DATABASE_URL": self.database_url,
            "CHAOS_INFLIGHT_DIR": str(self.inflight_dir),
            # This checkout's pgcelery and bench first, in the workers as in the harness.
            "PYTHONPATH": f"{ROOT / 'backend'}:{ROOT}",
        }
        counts: dict[str, int] = {}
        for pool in self.layout:
            counts[pool] = counts.get(pool, 0) + 1
            name = f"chaos-{pool}-{counts[pool]}"
            self.slots.append(Slot(name, pool, self.log_dir, env))

    def start(self) -> None:
        for slot in self.slots:
            slot.start()

    def _note(self, slot: Slot, pids: set[int]) -> None:
        for pid in pids:
            main = slot.proc is not None and pid == slot.proc.pid
            self.pid_names.setdefault(pid, slot.name if main else f"{slot.name} child")

    def kill(self, slot: Slot) -> None:
        """SIGKILL the slot's worker and its pool children at once."""
        with self._lock:
            pids = slot.pids()
            self._note(slot, pids)
            slot.expected_exit = True
            self.killed_pids |= pids
            self.kills += 1
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if slot.proc is not None:
                slot.proc.wait(10)

    def in_flight(self, slot: Slot) -> int:
        """Tasks the slot's processes are running now (from the tasks' marker files)."""
        return sum(1 for pid in slot.pids() if (self.inflight_dir / str(pid)).exists())

    def kill_mid_task(self, slot: Slot, patience: float) -> int:
        """SIGKILL the slot once it runs a task (or after ``patience`` s); tasks it was running."""
        deadline = time.monotonic() + patience
        while (running := self.in_flight(slot)) == 0 and time.monotonic() < deadline:
            time.sleep(0.002)
        self.kill(slot)
        return running

    def restart(self, slot: Slot) -> None:
        with self._lock:
            slot.start()

    def watch(self) -> None:
        """Count and restart workers that exited on their own (call this often)."""
        with self._lock:
            for slot in self.slots:
                self._note(slot, slot.pids())
                proc = slot.proc
                if proc is None or slot.expected_exit or proc.poll() is None:
                    continue
                self.own_exits.append(OwnExit(slot.name, proc.pid, proc.returncode, time.time()))
                slot.start()

    def pids_by_slot(self) -> dict[str, set[int]]:
        with self._lock:
            return {slot.name: slot.pids() for slot in self.slots}

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every worker (warm shutdown); SIGKILL whatever is still up after ``timeout``."""
        with self._lock:
            running = [s for s in self.slots if s.proc is not None and s.proc.poll() is None]
            for slot in running:
                slot.expected_exit = True
                assert slot.proc is not None
                slot.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for slot in running:
                assert slot.proc is not None
                try:
                    slot.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    for pid in slot.pids():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    slot.proc.wait(10)
