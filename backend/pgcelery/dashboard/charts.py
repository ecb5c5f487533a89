"""The queues page's throughput chart: an inline SVG drawn on the server, no chart library."""

from __future__ import annotations

from collections.abc import Iterable
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT, MINUTES = 600, 120, 60
#: Stacking order and colour of each state's bar segment.
SERIES = (("SUCCESS", "#2e7d32"), ("FAILURE", "#c62828"), ("OTHER", "#9e9e9e"))


def throughput_svg(counts: Iterable[tuple[int, str, int]]) -> Markup:
    """Results finished per minute over the last hour, newest on the right, stacked by state."""
    buckets: list[dict[str, int]] = [{} for _ in range(MINUTES)]
    for minutes_ago, state, count in counts:
        key = state if state in ("SUCCESS", "FAILURE") else "OTHER"
        slot = buckets[MINUTES - 1 - minutes_ago]
        slot[key] = slot.get(key, 0) + count
    top = max((sum(b.values()) for b in buckets), default=0) or 1
    bar = WIDTH / MINUTES
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT + 16}" '
        f'width="{WIDTH}" height="{HEIGHT + 16}" aria-label="results per minute, last hour">'
    ]
    for i, slot in enumerate(buckets):
        y = float(HEIGHT)
        for state, colour in SERIES:
            value = slot.get(state, 0)
            if not value:
                continue
            h = HEIGHT * value / top
            y -= h
            parts.append(
                f'<rect x="{i * bar:.1f}" y="{y:.1f}" width="{bar - 1:.1f}" height="{h:.1f}" '
                f'fill="{colour}"><title>{escape(state)}: {value} '
                f"({MINUTES - 1 - i} min ago)</title></rect>"
            )
    total = sum(sum(b.values()) for b in buckets)
    parts.append(
        f'<line x1="0" y1="{HEIGHT}" x2="{WIDTH}" y2="{HEIGHT}" stroke="#888"/>'
        f'<text x="0" y="{HEIGHT + 13}" font-size="11">60 min ago</text>'
        f'<text x="{WIDTH}" y="{HEIGHT + 13}" font-size="11" text-anchor="end">now</text>'
        f'<text x="{WIDTH / 2}" y="{HEIGHT + 13}" font-size="11" text-anchor="middle">'
        f"{total} results, peak {top if total else 0}/min</text></svg>"
    )
    # Every interpolated value is a number or escaped above.
    return Markup("".join(parts))  # noqa: S704
