"""Read values out of a ``/metrics`` body."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def sample(body: str, metric: str, **labels: str) -> float:
    """Sum of the samples called ``metric`` whose labels include ``labels`` (0 if none)."""
    total = 0.0
    for family in text_string_to_metric_families(body):
        for found in family.samples:
            if found.name == metric and all(found.labels.get(k) == v for k, v in labels.items()):
                total += found.value
    return total


def names(body: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(body) for s in family.samples}
