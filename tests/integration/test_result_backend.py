"""The result backend without SQLAlchemy: what a worker imports to store and read results, and
rows, groups, forget and expiry as Celery's own database backend has them (issue: worker RSS)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from celery import Celery, states
from celery.app.task import Context
from celery.backends.database import DatabaseBackend

from pgcelery import dsn
from pgcelery.results import backend as pg_backend
from tests.support.postgres import libpq

ROOT = Path(__file__).resolve().parents[2]

#: Run in a fresh interpreter: store and read a result, save and restore a group, then list
#: what got imported: a worker's result path loads neither SQLAlchemy nor Celery's database
#: backend, nor Alembic or pydantic (``import pgcelery`` included).
_WORKER_RESULT_PATH = textwrap.dedent(
    """
    import json, sys

    from celery import Celery
    from pgcelery.results import backend

    app = Celery("light", backend=sys.argv[1], set_as_current=True)
    app.conf.result_extended = True
    backend.install(app)
    assert isinstance(app.backend, backend.PgBackend), type(app.backend)
    app.backend.store_result("light-1", {"n": 5}, "SUCCESS")
    group = app.GroupResult("light-group", [app.AsyncResult("light-1")])
    group.save()
    restored = app.GroupResult.restore("light-group")
    print(json.dumps({
        "result": app.AsyncResult("light-1").get(timeout=10),
        "group": [r.id for r in restored.results],
        "sqlalchemy": sorted(m for m in sys.modules if m.split(".")[0] == "sqlalchemy"),
        "heavy": sorted(
            {m.split(".")[0] for m in sys.modules} & {"alembic", "pydantic", "pydantic_settings"}
        ),
        "database_backend": "celery.backends.database" in sys.modules,
    }))
    """
)


def test_storing_and_reading_results_imports_no_sqlalchemy(database_url: str) -> None:
    import json

    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'backend'}{os.pathsep}{ROOT}"}
    done = subprocess.run(
        [sys.executable, "-c", _WORKER_RESULT_PATH, dsn.result_backend_url(database_url)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["result"] == {"n": 5}
    assert report["group"] == ["light-1"]
    assert report["sqlalchemy"] == []
    assert report["heavy"] == []
    assert report["database_backend"] is False


# -- the same rows as Celery's DatabaseBackend ------------------------------------------------


def _apps(database_url: str, extended: bool) -> Iterator[tuple[Celery, Celery]]:
    """A stock app (Celery's DatabaseBackend) and a pgcelery one on the same tables."""
    url = dsn.result_backend_url(database_url)
    stock = Celery("stock", backend=url, set_as_current=False)
    ours = Celery("ours", backend=url, set_as_current=False)
    pg_backend.install(ours)
    for app in (stock, ours):
        app.conf.result_extended = extended
        app.conf.database_create_tables_at_setup = False
    try:
        assert type(stock.backend) is DatabaseBackend
        assert isinstance(ours.backend, pg_backend.PgBackend)
        yield stock, ours
    finally:
        stock.close()
        ours.close()


@pytest.fixture(params=[True, False], ids=["extended", "plain"])
def stock_and_ours(request: pytest.FixtureRequest, database_url: str) -> Iterator[tuple[Any, Any]]:
    for stock, ours in _apps(database_url, request.param):
        yield stock.backend, ours.backend


def _request(task_id: str) -> Context:
    return Context(
        id=task_id,
        task="tests.add",
        args=[2, 3],
        kwargs={"tenant_id": "t-1", "x": [1, 2]},
        hostname="w1@host",
        retries=2,
        delivery_info={"routing_key": "celery"},
        stamped_headers=["mark"],
        stamps={"mark": "m-1"},
    )


@pytest.mark.parametrize(
    ("result", "state"),
    [({"sum": 5, "items": [1, 2]}, states.SUCCESS), (ValueError("boom", 3), states.FAILURE)],
    ids=["success", "failure"],
)
def test_each_backend_reads_what_the_other_stored(
    stock_and_ours: tuple[Any, Any], result: Any, state: str
) -> None:
    stock, ours = stock_and_ours
    for writer, name in ((stock, "by-stock"), (ours, "by-ours")):
        writer.store_result(name, result, state, traceback="tb", request=_request(name))
        theirs = stock.get_task_meta(name, cache=False)
        mine = ours.get_task_meta(name, cache=False)
        if state == states.FAILURE:  # exceptions compare by identity: compare what they say
            assert (type(mine["result"]), mine["result"].args) == (ValueError, ("boom", 3))
            for meta in (theirs, mine):
                meta["result"] = repr(meta["result"])
        assert mine == theirs
        assert mine["status"] == state
        if ours.extended_result:
            assert mine["args"] == [2, 3]
            assert mine["kwargs"] == {"tenant_id": "t-1", "x": [1, 2]}
            assert (mine["worker"], mine["retries"], mine["queue"]) == ("w1@host", 2, "celery")
            assert (mine["stamped_headers"], mine["mark"]) == (["mark"], "m-1")


def test_a_missing_result_is_pending_as_in_celery(stock_and_ours: tuple[Any, Any]) -> None:
    stock, ours = stock_and_ours
    assert ours.get_task_meta("nobody", cache=False) == stock.get_task_meta("nobody", cache=False)
    assert ours.get_task_meta("nobody", cache=False)["status"] == states.PENDING
    assert ours.task_result_exists("nobody") is False


def test_a_stored_success_is_never_overwritten(stock_and_ours: tuple[Any, Any]) -> None:
    _, ours = stock_and_ours
    ours.store_result("once", 1, states.SUCCESS)
    ours.store_result("once", ValueError("late"), states.FAILURE)
    assert ours.get_task_meta("once", cache=False)["result"] == 1
    assert ours.task_result_exists("once") is True


def test_groups_save_restore_and_delete_as_in_celery(database_url: str) -> None:
    for stock, ours in _apps(database_url, extended=True):
        members = [ours.AsyncResult("g-a"), ours.AsyncResult("g-b")]
        ours.GroupResult("g-1", members).save()
        restored = ours.GroupResult.restore("g-1")
        assert [r.id for r in restored.results] == ["g-a", "g-b"]
        # Stock Celery reads the saved group too: the same encoding.
        assert [r.id for r in stock.GroupResult.restore("g-1").results] == ["g-a", "g-b"]
        # Saving the id again replaces the group.
        ours.GroupResult("g-1", members[:1]).save()
        assert [r.id for r in ours.GroupResult.restore("g-1").results] == ["g-a"]
        ours.backend.delete_group("g-1")
        assert ours.GroupResult.restore("g-1") is None
        assert ours.backend.get_group_meta("g-1", cache=False) is None


def test_forget_deletes_the_result(database_url: str) -> None:
    for _, ours in _apps(database_url, extended=True):
        ours.backend.store_result("gone", 1, states.SUCCESS)
        result = ours.AsyncResult("gone")
        assert result.get(timeout=10) == 1
        result.forget()
        assert ours.backend.task_result_exists("gone") is False
        assert ours.AsyncResult("gone").state == states.PENDING


def test_cleanup_deletes_expired_results_only(database_url: str) -> None:
    for _, ours in _apps(database_url, extended=True):
        ours.conf.result_expires = 3600
        backend = pg_backend.PgBackend(app=ours, url=ours.backend.url)
        backend.store_result("old", 1, states.SUCCESS)
        backend.store_result("new", 2, states.SUCCESS)
        backend.save_group("old-group", ours.GroupResult("old-group", []))
        backend.save_group("new-group", ours.GroupResult("new-group", []))
        with psycopg.connect(libpq(database_url), autocommit=True) as conn:
            conn.execute(
                "UPDATE celery_taskmeta SET date_done = date_done - interval '2 hours'"
                " WHERE task_id = 'old'"
            )
            conn.execute(
                "UPDATE celery_tasksetmeta SET date_done = date_done - interval '2 hours'"
                " WHERE taskset_id = 'old-group'"
            )
            backend.cleanup()
            tasks = conn.execute("SELECT task_id FROM celery_taskmeta").fetchall()
            groups = conn.execute("SELECT taskset_id FROM celery_tasksetmeta").fetchall()
        assert tasks == [("new",)]
        assert groups == [("new-group",)]


def test_retry_defaults_and_pickling_are_database_backends(database_url: str) -> None:
    for stock, ours in _apps(database_url, extended=True):
        backend = ours.backend
        assert (backend.always_retry, backend.max_retries) == (True, 3)
        assert (stock.backend.always_retry, stock.backend.max_retries) == (True, 3)
        assert backend.exception_safe_to_retry(psycopg.OperationalError("down"))
        assert not backend.exception_safe_to_retry(psycopg.errors.UniqueViolation("dup"))
        ours.conf.result_backend_max_retries = 7
        assert pg_backend.PgBackend(app=ours, url=backend.url).max_retries == 7
        ours.set_current()  # unpickling builds the backend on the current app
        copy = pickle.loads(pickle.dumps(backend))  # noqa: S301 (our own bytes)
        assert isinstance(copy, pg_backend.PgBackend)
        assert (copy.url, copy.expires) == (backend.url, backend.expires)
