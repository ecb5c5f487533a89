"""DeferredStarts orders a late STARTED write before the state that follows it."""

from __future__ import annotations

import threading

from pgcelery.results.deferred_start import DeferredStarts


def test_a_state_stored_while_started_is_being_written_waits_for_it() -> None:
    """The ordering rule, without a database: settle() returns only after a STARTED write
    already under way has finished, so the later state is always written last."""
    deferred = DeferredStarts(0.001)
    writing, release = threading.Event(), threading.Event()
    order: list[str] = []

    def slow_started_write() -> None:
        writing.set()
        release.wait(10)
        order.append("STARTED")

    deferred.defer("t-1", slow_started_write)
    assert writing.wait(10)
    settled = threading.Thread(target=lambda: (deferred.settle("t-1"), order.append("SUCCESS")))
    settled.start()
    settled.join(0.2)
    assert settled.is_alive()  # still waiting for the STARTED write
    release.set()
    settled.join(10)
    assert order == ["STARTED", "SUCCESS"]
    assert deferred.pending() == 0
