"""Render the benchmark figures as a Markdown table with pgcelery/stock and pgcelery/Redis."""

from __future__ import annotations

import statistics
from typing import Any

ROWS = [
    ("e2e_per_s", "end-to-end, 2,000 no-op tasks with results (tasks/s)", True),
    ("cpu_ms", "CPU per task in that run, client + workers + server (ms)", False),
    ("enqueue_per_s", "enqueue rate (msg/s)", True),
    ("rtt_p50_ms", "round trip p50 (ms)", False),
    ("rtt_p95_ms", "round trip p95 (ms)", False),
    ("rtt_p99_ms", "round trip p99 (ms)", False),
    ("pickup_p50_ms", "pickup latency p50 (ms)", False),
    ("pickup_p99_ms", "pickup latency p99 (ms)", False),
    ("sleep10_per_s", "10 ms tasks (tasks/s)", True),
    ("chord_per_s", "chord of 1,000 no-op tasks, end to end (header tasks/s)", True),
    ("bulk_enqueue_per_s", "group of 10,000 tasks, enqueue (msg/s)", True),
    ("rss_before_mb", "worker RSS before 10,000 tasks (MB)", False),
    ("rss_after_mb", "worker RSS after 10,000 tasks (MB)", False),
    ("kombu_message_rows", "kombu_message rows after the run", False),
    ("kombu_message_bytes", "kombu_message bytes after the run", False),
]


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 10 else f"{value:,.2f}"
    return f"{value:,}"


def _ratio(a: Any, b: Any, higher_better: bool) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not a or not b:
        return "—"
    if higher_better:
        return f"{a / b:.2f}x"
    # Latency and memory: lower is better; say which way and by how much.
    return f"{b / a:.2f}x lower" if a <= b else f"{a / b:.2f}x higher"


def _medians(results: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """(config, workers) → the median of every figure over the rounds."""
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for result in results:
        runs.setdefault((result["config"], result["workers"]), []).append(result)
    merged = {}
    for key, found in runs.items():
        figures: dict[str, Any] = {}
        for name in found[0]:
            values = [r[name] for r in found if isinstance(r.get(name), int | float)]
            figures[name] = statistics.median(values) if values else found[0][name]
        merged[key] = figures
    return merged


COLUMNS = (("stock", "stock sqla+db"), ("pgcelery", "pgcelery"),
           ("fair-off", "fair-off (pgcelery, PGCELERY_FAIR_TENANTS=false)"), ("redis", "Redis"),
           ("rabbitmq", "RabbitMQ (amqp+rpc)"))  # fmt: skip
SETUPS = ((1, "1 solo worker"), (2, "2 solo workers"), (0, "1 prefork worker, -c 2"))


def render(
    header: dict[str, Any],
    results: list[dict[str, Any]],
    phases: dict[str, Any] | None = None,
) -> str:
    by = _medians(results)
    rounds = header.get("rounds", 1)
    lines = [
        "# Benchmark: pgcelery vs stock kombu sqla vs Redis vs RabbitMQ",
        "",
        f"Measured {header['when']} on {header['machine']}; {header['postgres']}; "
        f"{header['versions']}. Produced by `make bench` (bench/): "
        + (f"medians of {rounds} rounds, the order of the columns alternating." if rounds > 1
           else "one round."),
        "",
    ]  # fmt: skip
    for workers, title in SETUPS:
        found = {config: by.get((config, workers), {}) for config, _ in COLUMNS}
        if not found["pgcelery"]:
            continue
        others = [(c, label) for c, label in COLUMNS if c != "pgcelery"]
        lines += [
            f"## {title}",
            "",
            "| measure | " + " | ".join(label for _, label in COLUMNS) + " | "
            + " | ".join(f"pgcelery/{label.split(' ')[0]}" for _, label in others) + " |",
            "|---|" + "---:|" * (len(COLUMNS) + len(others)),
        ]  # fmt: skip
        for key, label, higher in ROWS:
            pg = found["pgcelery"].get(key)
            ratio_rows = key not in ("kombu_message_rows", "kombu_message_bytes")
            cells = [_fmt(found[c].get(key)) for c, _ in COLUMNS]
            ratios = [
                _ratio(pg, found[c].get(key), higher) if ratio_rows else "—" for c, _ in others
            ]
            lines.append(f"| {label} | " + " | ".join(cells + ratios) + " |")
        lines.append("")
    one, two = by.get(("pgcelery", 1), {}), by.get(("pgcelery", 2), {})
    if one.get("sleep10_per_s") and two.get("sleep10_per_s"):
        lines.append(
            f"Scaling on a 10 ms task, pgcelery: two workers do "
            f"{two['sleep10_per_s'] / one['sleep10_per_s']:.2f}x one worker."
        )
    if one.get("rss_after_mb") is not None:
        lines.append(
            f"pgcelery worker RSS growth over 10,000 tasks: "
            f"{one['rss_after_mb'] - one['rss_before_mb']:+.1f} MB (one worker)."
        )
    lines += _phases_section(phases or {})
    lines += _events_section(results)
    if not header.get("redis"):
        lines.append("No Redis was reachable or installed: the Redis column is empty.")
    if not header.get("rabbitmq"):
        lines.append("No RabbitMQ answered on 5672: the RabbitMQ column is empty.")
    lines.append("")
    return "\n".join(lines)


EVENT_ROWS = [
    ("e2e_per_s", "end-to-end no-op tasks with results (tasks/s)"),
    ("rtt_p50_ms", "round trip p50 (ms)"),
    ("sleep10_per_s", "10 ms tasks (tasks/s)"),
    ("cpu_ms", "CPU per task, all processes (ms)"),
    ("cpu_workers_ms", "CPU per task, worker (ms)"),
    ("cpu_server_ms", "CPU per task, PostgreSQL or Redis (ms)"),
    ("cpu_receiver_ms", "CPU per task, event receiver (ms)"),
]


PHASE_ROWS = [
    ("e2e_per_s", "end-to-end no-op tasks with results (tasks/s)"),
    ("cpu_ms", "CPU per task, all processes (ms)"),
    ("cpu_workers_ms", "CPU per task, worker (ms)"),
    ("cpu_server_ms", "CPU per task, PostgreSQL or Redis (ms)"),
    ("cpu_client_ms", "CPU per task, client (ms)"),
    ("cpu_receiver_ms", "CPU per task, event receiver (ms)"),
]


def _phases_section(phases: dict[str, Any]) -> list[str]:
    """bench.events: one worker with -E; no receiver vs a receiver attached, alternating."""
    pg = phases.get("pgcelery")
    if not pg:
        return []
    rounds = len(pg["none"])
    lines = [
        "",
        f"## Event traffic, one worker with -E: no receiver vs a receiver attached "
        f"({rounds} alternating rounds, medians)",
        "",
        "| measure | pgcelery, no receiver | pgcelery, receiver | receiver/none"
        " | Redis, no receiver | Redis, receiver | receiver/none |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    redis = phases.get("redis") or {"none": [], "receiver": []}

    def med(runs: list[dict[str, Any]], key: str) -> float | None:
        values = [r[key] for r in runs if key in r]
        return statistics.median(values) if values else None

    for key, label in PHASE_ROWS:
        a, b = med(pg["none"], key), med(pg["receiver"], key)
        c, d = med(redis["none"], key), med(redis["receiver"], key)
        lines.append(
            f"| {label} | {_fmt(a)} | {_fmt(b)} | {_plain(b, a)} | {_fmt(c)} | {_fmt(d)} |"
            f" {_plain(d, c)} |"
        )
    lines.append("")
    for label, runs in (("pgcelery", pg), ("Redis", redis)):
        pairs = zip(runs["none"], runs["receiver"], strict=True)
        paired = [r["e2e_per_s"] / n["e2e_per_s"] for n, r in pairs]
        lines += _round_by_round(f"{label}, tasks/s with a receiver / without", paired)
    lines += [
        "",
        "Without a receiver a pgcelery worker builds and sends no task events, so the first"
        " column is a worker with no event traffic; Redis publishes its events to nobody. The"
        " receiver runs on the same cores.",
    ]
    return lines


def _events_section(results: list[dict[str, Any]]) -> list[str]:
    """Without events, with worker_send_task_events, and with a receiver attached (one worker,
    medians of alternating runs); the budget is at most 10% fewer tasks/s."""
    by = {r["config"]: r for r in results}
    base = by.get("pgcelery+events-off")
    if base is None:
        return []
    on, sink = by.get("pgcelery+events", {}), by.get("pgcelery+events+receiver", {})
    redis_off, redis_sink = by.get("redis+events-off", {}), by.get("redis+events+receiver", {})
    rounds = base.get("rounds", 1)
    lines = [
        "",
        f"## Worker events (-E), one worker, medians of {rounds} alternating runs",
        "",
        "| measure | events off | events on | events on + receiver | on/off"
        " | on+receiver/off | Redis: on+receiver/off |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, label in EVENT_ROWS:
        a, b, c = base.get(key), on.get(key), sink.get(key)
        lines.append(
            f"| {label} | {_fmt(a)} | {_fmt(b)} | {_fmt(c)} | "
            f"{_plain(b, a)} | {_plain(c, a)} | {_plain(redis_sink.get(key), redis_off.get(key))} |"
        )
    lines.append("")
    for label, found in (("pgcelery", sink), ("Redis", redis_sink)):
        lines += _round_by_round(f"{label}, events on + receiver / off", found.get("paired_e2e"))
    lines += [
        "",
        "Ratios here are plain quotients (with events / without): below 1.00 for tasks/s and"
        " above 1.00 for latency and CPU mean events cost something. The receiver counts every"
        " event, as Flower's would; all processes share this machine's cores.",
        "",
    ]
    return lines


def _round_by_round(what: str, ratios: list[float] | None) -> list[str]:
    if not ratios:
        return []
    each = ", ".join(f"{r:.2f}" for r in ratios)
    return [f"{what}, round by round: {each} (median {statistics.median(ratios):.2f})."]


def _plain(a: Any, b: Any) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not a or not b:
        return "—"
    return f"{a / b:.2f}"
