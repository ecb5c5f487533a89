"""``pgcelery queue list|pause|resume`` and ``pgcelery revoke``, run through the CLI's main."""

from __future__ import annotations

import json

import pytest
from celery import Celery

from pgcelery.cli import main
from tests.support.postgres import scalar


@pytest.fixture
def env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("PGCELERY_METRICS_ENABLED", "false")
    return database_url


def _listed(capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, object]]:
    assert main(["queue", "list", "--json"]) == 0
    return {row["name"]: row for row in json.loads(capsys.readouterr().out)}


def test_queue_pause_list_resume(env: str, app: Celery, capsys: pytest.CaptureFixture[str]) -> None:
    app.send_task("tests.add", args=(1, 2))
    app.send_task("tests.add", args=(1, 2), countdown=3600)
    assert main(["queue", "pause", "celery"]) == 0
    assert main(["queue", "pause", "nightly"]) == 0  # a queue nobody used yet
    capsys.readouterr()
    rows = _listed(capsys)
    assert rows["celery"] == {
        "name": "celery",
        "pending": 1,
        "delayed": 1,
        "in_flight": 0,
        "oldest_pending_age": rows["celery"]["oldest_pending_age"],
        "paused": True,
    }
    assert rows["nightly"]["paused"] is True
    assert main(["queue", "resume", "celery"]) == 0
    assert main(["queue", "resume", "celery"]) == 1  # not paused
    capsys.readouterr()
    assert _listed(capsys)["celery"]["paused"] is False
    assert main(["queue", "list"]) == 0
    assert "nightly" in capsys.readouterr().out


def test_revoke_command_deletes_the_message(
    env: str, app: Celery, capsys: pytest.CaptureFixture[str]
) -> None:
    sent = app.send_task("tests.add", args=(1, 2), countdown=3600)
    assert main(["revoke", sent.id, "unknown-id"]) == 0
    out = capsys.readouterr().out
    assert f"{sent.id} revoked" in out
    assert "unknown-id had no waiting message" in out
    assert scalar(env, "SELECT count(*) FROM kombu_message") == 0
    assert app.AsyncResult(sent.id).state == "REVOKED"
