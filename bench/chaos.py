"""``make chaos``: real workers and a private PostgreSQL under faults, at a fixed producer rate.

Modelled on the chaos and pressure phases of public PostgreSQL job-queue benchmarks, run
natively. For each scenario: a fresh database, a fleet of real workers (two ``-P solo`` and one
``-P prefork -c 2`` by default), a producer at ``--rate`` tasks/s, and three phases: warm-up,
fault, recovery; then the producer stops and the queue drains. It prints per scenario: tasks
produced, lost and duplicated, completions per second in each phase, the recovery time,
workers that exited on their own, and table sizes and dead tuples.

Targets: nothing lost, no duplicate beyond the re-run of a task a SIGKILLed worker had
finished but not acked (at-least-once), no worker exiting on its own, recovery within the
visibility timeout + 5 s. Exits 1 when a scenario misses one. Not part of ``make test``.
Quick run: ``make chaos CHAOS_ARGS="--scenarios worker-sigkill --warmup 5 --fault 10"``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.chaos_faults import SCENARIOS, FaultContext
from bench.chaos_load import Producer, Sampler
from bench.chaos_report import ScenarioResult, details, judge, scenario_table, table_sizes
from bench.chaos_server import PrivateServer, connect, private_server, scalar
from bench.chaos_tally import Phases, leftover_messages, log_summary, tally
from bench.chaos_workers import Fleet
from bench.environment import machine

DEFAULT_SCENARIOS = [name for name in SCENARIOS if name != "baseline"]
#: Messages of the task queue still waiting or running (remote-control replies left out).
BACKLOG = (
    "SELECT count(*) FROM kombu_message m JOIN kombu_queue q ON q.id = m.queue_id"
    " WHERE q.name = 'celery'"
)


@dataclass(frozen=True)
class Options:
    rate: float
    warmup: float
    fault: float
    recovery: float
    visibility_timeout: float
    task_sleep: float
    layout: list[str]
    overload_factor: float
    drain_timeout: float
    log_level: str

    def worker_env(self) -> dict[str, str]:
        return {
            "PGCELERY_VISIBILITY_TIMEOUT": str(self.visibility_timeout),
            "PGCELERY_METRICS_ENABLED": "false",
            "PGCELERY_LOG_LEVEL": self.log_level,
            "PGCELERY_SOFT_SHUTDOWN_TIMEOUT": "5",
        }


def say(message: str) -> None:
    print(f"chaos: {message}", file=sys.stderr, flush=True)


def _wait_ready(url: str, fleet: Fleet, timeout: float = 120.0) -> None:
    """Until every worker node has written its heartbeat row (it consumes from then on)."""
    deadline = time.monotonic() + timeout
    while scalar(url, "SELECT count(*) FROM pgcelery_worker") < len(fleet.slots):
        if time.monotonic() > deadline:
            raise SystemExit(f"workers not up after {timeout:.0f} s; logs in {fleet.log_dir}")
        fleet.watch()
        time.sleep(0.5)


def _drain(url: str, timeout: float) -> float:
    """Wait until no task message is waiting or running; returns how long that took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if scalar(url, BACKLOG, default=-1) == 0:
            break
        time.sleep(0.5)
    return time.monotonic() - started


def calibrate(server: PrivateServer, options: Options, log_root: Path, tasks: int) -> float:
    """Tasks/s the fleet completes while a producer publishes at the overload rate.

    First the drain rate of a full queue (the middle 70% of the drain); then the rate the fleet
    keeps while a producer publishes at ``overload_factor`` times that, because on a small
    machine the producer takes its share of the CPU: an overload computed from the first
    figure alone would be a larger overload than asked for.
    """
    alone = _drain_rate(server, options, log_root / "calibration", tasks)
    say(f"calibrating: {alone:.0f} tasks/s draining; now with a producer at the overload rate")
    url = server.fresh_database("chaos_calibration_loaded")
    log_dir = log_root / "calibration-loaded"
    log_dir.mkdir()
    rate = alone * options.overload_factor
    fleet = Fleet(url, log_dir, options.worker_env(), options.layout)
    producer = Producer(url, rate, options.task_sleep, max_rate=rate)
    fleet.start()
    try:
        _wait_ready(url, fleet)
        producer.start()
        time.sleep(5)  # warm-up of the measuring window, not a wait for a condition
        done, started = scalar(url, "SELECT count(*) FROM chaos_runs"), time.monotonic()
        time.sleep(10)
        finished = scalar(url, "SELECT count(*) FROM chaos_runs")
        loaded = (finished - done) / (time.monotonic() - started)
    finally:
        producer.stop()
        fleet.stop()
    server.drop_database(url)
    return min(alone, loaded)


def _drain_rate(server: PrivateServer, options: Options, log_dir: Path, tasks: int) -> float:
    """Tasks/s the fleet completes from a full queue (the middle 70% of the drain)."""
    url = server.fresh_database("chaos_calibration")
    log_dir.mkdir()
    producer = Producer(url, rate=1.0, task_sleep=options.task_sleep, max_rate=1.0)
    for seq in range(tasks):
        producer.app.send_task("chaos.record", args=(seq, options.task_sleep))
    producer.app.close()
    fleet = Fleet(url, log_dir, options.worker_env(), options.layout)
    fleet.start()
    try:
        _drain(url, timeout=600)
    finally:
        fleet.stop()
    with connect(url, timeout=30) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM at)::float8 FROM chaos_runs ORDER BY at"
        ).fetchall()
    server.drop_database(url)
    times = [float(r[0]) for r in rows]
    low, high = int(len(times) * 0.2), int(len(times) * 0.9)
    return (high - low) / max(times[high - 1] - times[low], 1e-9)


def run_scenario(
    server: PrivateServer, name: str, options: Options, capacity: float, log_dir: Path
) -> ScenarioResult:
    url = server.fresh_database(f"chaos_{log_dir.name.replace('-', '_')}")
    log_dir.mkdir()
    fleet = Fleet(url, log_dir, options.worker_env(), options.layout)
    overload_rate = capacity * options.overload_factor
    producer = Producer(
        url, options.rate, options.task_sleep, max_rate=max(options.rate, overload_rate)
    )
    sampler = Sampler(url, fleet)
    context = FaultContext(server, url, fleet, producer, options.rate, overload_rate)
    with contextlib.ExitStack() as cleanup:
        # Interrupted (Ctrl-C) or failed: no worker or thread outlives the scenario.
        cleanup.callback(fleet.stop)
        fleet.start()
        _wait_ready(url, fleet)
        cleanup.callback(sampler.stop)
        sampler.start()
        cleanup.callback(producer.stop)
        producer.start()
        warmup = time.time()
        say(f"{name}: warm-up {options.warmup:.0f} s")
        time.sleep(options.warmup)
        fault = time.time()
        say(f"{name}: fault {options.fault:.0f} s")
        fault_ended, detail = SCENARIOS[name](context, time.monotonic() + options.fault)
        recovery = time.time()
        say(f"{name}: recovery {options.recovery:.0f} s ({detail})")
        time.sleep(options.recovery)
        pids_by_slot = fleet.pids_by_slot()
        producer.stop()
        stopped = time.time()
        drain_seconds = _drain(url, options.drain_timeout)
        drained = time.time()
    phases = Phases(warmup, fault, recovery, stopped, drained, fault_ended)
    counted = tally(
        url,
        producer.sent,
        producer.failed,
        fleet.killed_pids,
        phases,
        pids_by_slot,
        stall_window=min(10.0, options.recovery),
        pid_names=fleet.pid_names,
    )
    leftover = leftover_messages(url)
    server.drop_database(url)
    result = ScenarioResult(
        name=name,
        detail=detail,
        tally=counted,
        own_exits=fleet.own_exits,
        kills=fleet.kills,
        tables=sampler.tables,
        peak_backlog=sampler.peak_backlog,
        publish_errors=producer.errors,
        log_lines=log_summary(log_dir),
        drain_seconds=drain_seconds,
        leftover=leftover,
    )
    judge(result, options.visibility_timeout + 5)
    say(f"{name}: {'targets met' if not result.failures else '; '.join(result.failures)}")
    return result


def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, Options]:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated, from: {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--rate", type=float, default=50.0, help="producer tasks/s")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds")
    parser.add_argument("--fault", type=float, default=20.0, help="seconds")
    parser.add_argument("--recovery", type=float, default=25.0, help="seconds")
    parser.add_argument("--visibility-timeout", type=float, default=10.0, help="seconds")
    parser.add_argument("--task-sleep", type=float, default=0.01, help="seconds of work per task")
    parser.add_argument("--workers", default="solo,solo,prefork", help="pools, one per worker")
    parser.add_argument("--overload-factor", type=float, default=1.5)
    parser.add_argument(
        "--capacity", type=float, help="tasks/s the fleet completes (measured when not given)"
    )
    parser.add_argument("--calibration-tasks", type=int, default=3000)
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the queue to empty once the producer stopped",
    )
    parser.add_argument(
        "--log-level", default="WARNING", help="workers' log level (INFO names every task)"
    )
    args = parser.parse_args(argv)
    unknown = set(args.scenarios.split(",")) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    options = Options(
        rate=args.rate,
        warmup=args.warmup,
        fault=args.fault,
        recovery=args.recovery,
        visibility_timeout=args.visibility_timeout,
        task_sleep=args.task_sleep,
        layout=args.workers.split(","),
        overload_factor=args.overload_factor,
        drain_timeout=args.drain_timeout,
        log_level=args.log_level.upper(),
    )
    return args, options


def main(argv: list[str] | None = None) -> int:
    args, options = _parse(argv)
    names = args.scenarios.split(",")
    started = time.monotonic()
    with private_server() as server:
        log_root = server.root / "logs"
        log_root.mkdir()
        say(f"worker logs under {log_root}, server log {server.log_file}")
        version = server.version()
        capacity = args.capacity
        if capacity is None and "overload" in names:
            say(f"calibrating: {args.calibration_tasks} tasks from a full queue")
            capacity = calibrate(server, options, log_root, args.calibration_tasks)
        capacity = capacity or 0.0
        results = [
            run_scenario(server, name, options, capacity, log_root / f"{i:02d}-{name}")
            for i, name in enumerate(names, 1)
        ]
    took = time.monotonic() - started
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# make chaos, {when}\n")
    print(f"{machine()}; {version} (embedded, fsync off).")
    print(
        f"Workers: {', '.join(options.layout)}; producer {options.rate:.0f} tasks/s; "
        f"task {options.task_sleep * 1000:.0f} ms; visibility timeout "
        f"{options.visibility_timeout:.0f} s; phases {options.warmup:.0f} s warm-up, "
        f"{options.fault:.0f} s fault, {options.recovery:.0f} s recovery; "
        + (
            f"capacity {capacity:.0f} tasks/s (overload at {options.overload_factor:g}x: "
            f"{capacity * options.overload_factor:.0f}/s); "
            if capacity
            else ""
        )
        + f"whole run {took / 60:.1f} min; worker logs in {log_root}.\n"
    )
    print(scenario_table(results))
    print("\nTable sizes and dead tuples (peak during the scenario):\n")
    print(table_sizes(results))
    print()
    print(details(results))
    met = sum(1 for r in results if not r.failures)
    print(f"\nTargets met in {met} of {len(results)} scenarios.")
    return 1 if any(r.failures for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
