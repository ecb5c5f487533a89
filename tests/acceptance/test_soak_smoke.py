"""`make soak` in miniature: the harness drives the Procfile worker and samples its memory."""

from __future__ import annotations

from bench.soak import growth_mb, soak


def test_soak_harness_runs_tasks_through_the_procfile_worker(database_url: str) -> None:
    samples = soak(database_url, tasks=100, interval=0.5)
    assert samples[-1].done == 100
    assert all(sample.rss_mb > 10 for sample in samples)
    assert [s.done for s in samples] == sorted(s.done for s in samples)
    assert growth_mb(samples, warmup=10) < 64
