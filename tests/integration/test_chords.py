"""Chords are joined in PostgreSQL: no chord_unlock task, the body fires once with the header's
results in order, Celery's error semantics hold, and a repeated or interrupted header task
never fires the body twice or loses it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, chain, chord, group
from celery.exceptions import ChordError
from celery.signals import before_task_publish

from pgcelery import create_app
from pgcelery.settings import Settings
from tests.support.postgres import scalar
from tests.support.waiting import wait_until
from tests.support.workers import solo_worker

INCLUDE = ["tests.support.tasks", "tests.support.broker_tasks", "tests.support.canvas_tasks"]


@pytest.fixture
def canvas_app(runs_db: str) -> Iterator[Celery]:
    settings = Settings(
        DATABASE_URL=runs_db, PGCELERY_METRICS_ENABLED=False, PGCELERY_PRUNE_INTERVAL=0
    )
    app = create_app("canvas-test", include=INCLUDE, settings=settings)
    yield app
    app.close()


@pytest.fixture
def published() -> Iterator[list[str]]:
    """The name of every task published while the test runs (client and worker alike)."""
    names: list[str] = []

    def record(sender: Any = None, headers: Any = None, **kwargs: Any) -> None:
        names.append(str((headers or {}).get("task") or sender))

    before_task_publish.connect(record, weak=False)
    yield names
    before_task_publish.disconnect(record)


def _sig(app: Celery, name: str, *args: Any, **options: Any) -> Any:
    return app.signature(name, args=args, **options)


def _runs(url: str, label: str) -> int:
    return scalar(url, f"SELECT count(*) FROM test_runs WHERE label = '{label}'")


def test_a_chord_joins_in_the_database_and_its_body_runs_once(
    canvas_app: Celery, runs_db: str, published: list[str]
) -> None:
    header = [_sig(canvas_app, "tests.add", i, i) for i in range(25)]
    body = _sig(canvas_app, "tests.canvas.collect")
    with solo_worker(canvas_app):
        result = chord(header)(body)
        assert result.get(timeout=60) == [2 * i for i in range(25)]
    assert _runs(runs_db, "body") == 1
    assert "celery.chord_unlock" not in published
    assert scalar(runs_db, "SELECT count(*) FROM pgcelery_chord WHERE fired_at IS NOT NULL") == 1
    assert scalar(runs_db, "SELECT count(*) FROM pgcelery_chord_part") == 25


def test_a_failed_header_task_fails_the_body_with_a_chord_error_and_calls_its_errback(
    canvas_app: Celery, runs_db: str
) -> None:
    errback = _sig(canvas_app, "tests.canvas.errback")
    failing = _sig(canvas_app, "tests.fail", "boom")
    header = [_sig(canvas_app, "tests.add", 1, 1), failing, _sig(canvas_app, "tests.add", 2, 2)]
    body = _sig(canvas_app, "tests.canvas.collect", link_error=[errback])
    with solo_worker(canvas_app):
        result = chord(header)(body)
        # Not get(): it raises the failed header task's own error, from the body's parent.
        fresh = canvas_app.AsyncResult(result.id)
        wait_until(fresh.ready, timeout=60, what="the chord body to fail")
        assert isinstance(fresh.result, ChordError)
        assert f"Dependency {result.parent.results[1].id} raised" in str(fresh.result)
        errbacks = (
            f"SELECT count(*) FROM test_runs WHERE label = 'errback' AND task_id = '{result.id}'"
        )
        wait_until(lambda: scalar(runs_db, errbacks) == 1, timeout=30, what="the errback")
    assert _runs(runs_db, "body") == 0


def test_an_empty_header_runs_the_body_with_an_empty_list(canvas_app: Celery) -> None:
    with solo_worker(canvas_app):
        result = chord([])(_sig(canvas_app, "tests.canvas.collect"))
        assert result.get(timeout=30) == []


def test_chords_inside_chains_groups_of_chains_and_nested_chords(
    canvas_app: Celery, published: list[str]
) -> None:
    add, total = "tests.add", "tests.canvas.total"
    with solo_worker(canvas_app):
        # A chord in a chain: the chain's first result feeds every header task.
        in_chain = chain(
            _sig(canvas_app, add, 1, 1),
            chord([_sig(canvas_app, add, 10), _sig(canvas_app, add, 20)], _sig(canvas_app, total)),
            _sig(canvas_app, add, 100),
        )
        assert in_chain.apply_async().get(timeout=60) == (2 + 10) + (2 + 20) + 100
        # A header made of chains: each chain's last result is one member.
        chains = chord(
            [chain(_sig(canvas_app, add, i, i), _sig(canvas_app, add, 1)) for i in range(5)],
            _sig(canvas_app, total),
        )
        assert chains.apply_async().get(timeout=60) == sum(2 * i + 1 for i in range(5))
        # A chord in the header of a chord.
        pair = [_sig(canvas_app, add, 1, 2), _sig(canvas_app, add, 3, 4)]
        inner = chord(pair, _sig(canvas_app, total))
        outer = chord([inner, _sig(canvas_app, add, 5, 5)], _sig(canvas_app, total))
        assert outer.apply_async().get(timeout=60) == (3 + 7) + 10
    assert "celery.chord_unlock" not in published


def test_a_group_result_is_read_in_one_query_per_round(
    canvas_app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    with solo_worker(canvas_app):
        results = group(_sig(canvas_app, "tests.add", i, 1) for i in range(40)).apply_async()
        results.join_native(timeout=60)  # all finished
    backend = canvas_app.backend
    backend._cache.clear()
    reads: list[int] = []
    single: list[str] = []
    original = backend._metas
    monkeypatch.setattr(backend, "_metas", lambda ids: reads.append(len(ids)) or original(ids))
    original_read = backend._read_task
    monkeypatch.setattr(backend, "_read_task", lambda tid: single.append(tid) or original_read(tid))
    assert results.get(timeout=10) == [i + 1 for i in range(40)]
    assert reads == [40]
    assert single == []


def _part_request(app: Celery, group_id: str, task_id: str, body: Any) -> Any:
    from celery.app.task import Context

    return Context(id=task_id, group=group_id, chord=dict(body), group_index=None)


def _chord_in_the_database(app: Celery, size: int) -> tuple[Any, list[str], Any]:
    from celery.result import AsyncResult, GroupResult
    from kombu.utils.uuid import uuid

    group_id = uuid()
    members = [uuid() for _ in range(size)]
    header = GroupResult(group_id, [AsyncResult(m, app=app) for m in members], app=app)
    body = _sig(app, "tests.canvas.collect").freeze()
    signature = _sig(app, "tests.canvas.collect", task_id=body.id)
    app.backend.apply_chord((group_id, header.results), signature)
    app.backend.set_chord_size(group_id, size)
    return header, members, signature


def _bodies_sent(url: str) -> int:
    return scalar(
        url, "SELECT count(*) FROM kombu_message WHERE payload LIKE '%tests.canvas.collect%'"
    )


def test_a_header_task_killed_between_counting_and_firing_fires_the_body_when_redelivered(
    canvas_app: Celery, runs_db: str
) -> None:
    backend = canvas_app.backend
    header, members, body = _chord_in_the_database(canvas_app, 3)
    requests = [_part_request(canvas_app, header.id, m, body) for m in members]
    for i, request in enumerate(requests[:2]):
        backend.mark_as_done(request.id, i, request=request)
    # The last part's result is stored and counted; its worker dies before firing the body.
    backend.store_result(requests[2].id, 2, "SUCCESS", request=requests[2])
    backend._counted.task = None
    assert _bodies_sent(runs_db) == 0
    # Redelivered: it runs again; its result stays, it counts nothing, and it fires the body.
    backend.mark_as_done(requests[2].id, 99, request=requests[2])
    assert _bodies_sent(runs_db) == 1
    # Delivered yet again after the body was sent: nothing more.
    backend.mark_as_done(requests[2].id, 99, request=requests[2])
    backend.mark_as_done(requests[0].id, 0, request=requests[0])
    assert _bodies_sent(runs_db) == 1
    assert scalar(runs_db, "SELECT done FROM pgcelery_chord") == 3
    with solo_worker(canvas_app):
        assert canvas_app.AsyncResult(body.id).get(timeout=30) == [0, 1, 2]


def test_concurrent_last_parts_fire_the_body_exactly_once(canvas_app: Celery, runs_db: str) -> None:
    import threading

    backend = canvas_app.backend
    size = 16
    header, members, body = _chord_in_the_database(canvas_app, size)
    barrier = threading.Barrier(size)
    errors: list[BaseException] = []

    def finish(i: int) -> None:
        request = _part_request(canvas_app, header.id, members[i], body)
        barrier.wait()
        try:
            backend.mark_as_done(members[i], i, request=request)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert _bodies_sent(runs_db) == 1
