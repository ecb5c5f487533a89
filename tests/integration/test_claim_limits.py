"""The claim in the database: fair rotation across tenant groups, weights, priorities, and
concurrency and rate limits that hold for every claimant at once (several channels, each on its
own connection, standing in for workers)."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from celery import Celery
from kombu import Queue

from pgcelery import set_tenant_weight
from pgcelery.broker.channel import Channel
from pgcelery.broker.delivery import parse_tag
from pgcelery.broker.limit_state import prune_limit_state
from pgcelery.schema.names import Names
from pgcelery.settings import Settings
from tests.support import limited_tasks
from tests.support.postgres import libpq, scalar
from tests.support.workers import solo_worker

Claimed = list[tuple[str, dict[str, Any]]]


@contextmanager
def _channel(app: Celery) -> Iterator[Channel]:
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        Queue("celery")(channel).declare()
        yield channel


def _claim(channel: Channel, n: int) -> Claimed:
    return channel._claim(["celery"], n)[0]


def _labels(claimed: Claimed) -> list[str]:
    return [p["headers"]["argsrepr"] + p["headers"].get("kwargsrepr", "") for _, p in claimed]


def _tenants(claimed: Claimed) -> list[str | None]:
    return [p["headers"].get("pgcelery_tenant_id") for _, p in claimed]


def _ack(channel: Channel, claimed: Claimed) -> None:
    for _, payload in claimed:
        parsed = parse_tag(payload["properties"]["delivery_tag"])
        assert parsed is not None
        channel._delete_acked([parsed[0]], [parsed[1]])


def test_claims_go_round_the_tenants_with_global_tasks_as_a_group(app: Celery) -> None:
    a, b = sorted(str(uuid.uuid4()) for _ in range(2))
    for _ in range(10):
        limited_tasks.tenant_work.delay(tenant_id=a, label="A")
    for _ in range(3):
        limited_tasks.tenant_work.delay(tenant_id=b, label="B")
        limited_tasks.global_work.delay(label="global")
    with _channel(app) as channel:
        rounds = [_tenants(_claim(channel, 1)) for _ in range(9)]
        assert [r[0] for r in rounds] == [None, a, b] * 3
        # One group left: a batch fills from it, not one message a claim.
        assert _tenants(_claim(channel, 20)) == [a] * 7


def test_a_batch_takes_a_turn_from_each_group(app: Celery) -> None:
    tenants = sorted(str(uuid.uuid4()) for _ in range(3))
    for tenant in tenants:
        for _ in range(5):
            limited_tasks.tenant_work.delay(tenant_id=tenant, label="x")
    with _channel(app) as channel:
        assert sorted(_tenants(_claim(channel, 6))) == sorted(tenants * 2)


def test_weights_give_a_tenant_that_many_turns(app: Celery, settings: Settings) -> None:
    a, b, c = sorted(str(uuid.uuid4()) for _ in range(3))
    set_tenant_weight(b, 3, settings)
    for tenant in (a, b, c):
        for _ in range(100):
            limited_tasks.tenant_work.delay(tenant_id=tenant, label="x")
    with _channel(app) as channel:
        one_by_one = [t for _ in range(50) for t in _tenants(_claim(channel, 1))]
        batched = [t for _ in range(5) for t in _tenants(_claim(channel, 7))]
    for claimed in (one_by_one, batched):
        assert claimed.count(b) / len(claimed) == pytest.approx(0.6, abs=0.06), claimed
    set_tenant_weight(b, 1, settings)
    assert scalar(settings.database_url, "SELECT count(*) FROM pgcelery_tenant_weight") == 0


def test_a_higher_priority_comes_first_whatever_its_tenant(app: Celery) -> None:
    a, b = sorted(str(uuid.uuid4()) for _ in range(2))
    for _ in range(3):
        limited_tasks.tenant_work.delay(tenant_id=a, label="low")
    limited_tasks.tenant_work.apply_async(kwargs={"tenant_id": b, "label": "high"}, priority=9)
    with _channel(app) as channel:
        assert _tenants(_claim(channel, 1)) == [b]


def test_messages_over_a_concurrency_limit_stay_unleased_and_other_work_is_claimed(
    app: Celery, database_url: str
) -> None:
    for _ in range(5):
        limited_tasks.capped.delay(label="capped")
    limited_tasks.global_work.delay(label="other")
    with _channel(app) as first, _channel(app) as second:
        taken = _claim(first, 10)
        assert sorted(p["headers"]["task"] for _, p in taken) == [
            "tests.limits.capped",
            "tests.limits.capped",
            "tests.limits.global_work",
        ]
        assert _claim(second, 10) == []
        leased = "SELECT count(*) FROM kombu_message WHERE lease_token IS NOT NULL"
        assert scalar(database_url, leased) == 3
        _ack(first, taken[:1])
        assert len(_claim(second, 10)) == 1  # one slot came free, one message took it


def test_a_slot_frees_when_its_lease_runs_out(app: Celery, database_url: str) -> None:
    for _ in range(3):
        limited_tasks.capped.delay(label="capped")
    with _channel(app) as first, _channel(app) as second:
        first.visibility_timeout = 1.0
        assert len(_claim(first, 10)) == 2
        first._lease_renewer().stop()  # as if the worker were killed: its leases run out
        assert _claim(second, 10) == []
        time.sleep(1.1)  # the lease's own clock: nothing to poll for but the lease
        assert len(_claim(second, 10)) == 2  # both slots: one new message, one redelivered


def test_a_released_message_frees_its_slot(app: Celery) -> None:
    for _ in range(3):
        limited_tasks.capped.delay(label="capped")
    with _channel(app) as first, _channel(app) as second:
        taken = _claim(first, 10)
        first._release([taken[0][1]["properties"]["delivery_tag"]])
        assert len(_claim(second, 10)) == 1


def test_a_per_argument_limit_counts_each_value_apart(app: Celery) -> None:
    @app.task(name="tests.limits.per_account", concurrency_limit=1, concurrency_key="account_id")
    def per_account(account_id: int, note: str = "") -> None: ...

    for account in (1, 2, 1, 2, 3):
        per_account.delay(account)  # by position: the key reads the argument's name
    per_account.delay(account_id=3)
    with _channel(app) as channel:
        claimed = _claim(channel, 10)
    assert sorted(p["headers"]["argsrepr"] for _, p in claimed) == ["(1,)", "(2,)", "(3,)"]


def test_a_rate_limit_spaces_starts_and_says_when_the_next_may_start(
    app: Celery, database_url: str
) -> None:
    for _ in range(3):
        limited_tasks.rated.delay(label="rated")
    with _channel(app) as first, _channel(app) as second:
        assert len(_claim(first, 10)) == 1
        assert _claim(second, 10) == []
        due = second.connection._poll_wait()
        assert 0 < due <= 0.2
        time.sleep(due)
        assert len(_claim(second, 10)) == 1


def test_concurrent_claimants_never_hold_more_than_the_limit(app: Celery) -> None:
    """Six claimants race for 60 messages under a limit of 2, holding each a random moment:
    at no moment do more than two hold one (counted under a lock, after the claim returned
    and before the ack is sent, so the window counted is inside the lease)."""
    for _ in range(60):
        limited_tasks.capped.delay(label="capped")
    held = 0
    most = 0
    done = 0
    lock = threading.Lock()
    errors: list[BaseException] = []

    def claimant() -> None:
        nonlocal held, most, done
        try:
            with _channel(app) as channel:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    with lock:
                        if done >= 60:
                            return
                    claimed = _claim(channel, 2)
                    if not claimed:
                        time.sleep(0.002)
                        continue
                    with lock:
                        held += len(claimed)
                        most = max(most, held)
                    time.sleep(random.uniform(0, 0.01))
                    with lock:
                        held -= len(claimed)
                        done += len(claimed)
                    _ack(channel, claimed)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimant) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert done == 60
    assert most == 2


def test_idle_limit_state_is_pruned_and_a_held_slot_is_kept(app: Celery, database_url: str) -> None:
    for _ in range(2):
        limited_tasks.capped.delay(label="capped")
        limited_tasks.rated.delay(label="rated")
    with _channel(app) as channel:
        _claim(channel, 10)
        with psycopg.connect(libpq(database_url), autocommit=True) as conn:
            conn.execute("UPDATE pgcelery_limit_state SET touched_at = now() - interval '2 hours'")
            conn.execute("UPDATE pgcelery_limit_state SET next_at = now() - interval '1 hour'")
            # The capped key holds a live lease: kept; the rate key is idle: pruned.
            assert prune_limit_state(conn, Names(), 100) == 1
            keys = [r[0] for r in conn.execute("SELECT key FROM pgcelery_limit_state")]
    assert keys == ["c:tests.limits.capped"]


def test_a_worker_held_back_by_a_rate_limit_does_not_poll_busily(
    app: Celery, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One start a minute: the second message waits a minute, and the worker claims at its
    polling interval (1 s), not in a loop."""

    @app.task(name="tests.limits.once_a_minute", global_rate_limit="1/m")
    def once_a_minute() -> None: ...

    claims: list[float] = []
    original = Channel._claim

    def counting(self: Channel, queues: list[str], limit: int) -> Any:
        claims.append(time.monotonic())
        return original(self, queues, limit)

    monkeypatch.setattr(Channel, "_claim", counting)
    first, second = once_a_minute.delay(), once_a_minute.delay()
    with solo_worker(app):
        first.get(timeout=30)
        started = len(claims)
        time.sleep(3.0)  # the span whose claims are counted
        during = len(claims) - started
    assert second.state == "PENDING"
    assert during <= 6, during
    assert scalar(database_url, "SELECT count(*) FROM kombu_message WHERE lease_token IS NULL") == 1


def test_a_key_at_its_limit_hides_none_of_the_keys_behind_it(app: Celery) -> None:
    """A thousand messages of one tenant at its limit, queued before another tenant's one:
    the other tenant's is claimed at once (keys are visited, not messages)."""
    first, second = sorted(str(uuid.uuid4()) for _ in range(2))
    for _ in range(1000):
        limited_tasks.one_per_tenant.delay(tenant_id=first, label="flood")
    limited_tasks.one_per_tenant.delay(tenant_id=second, label="other")
    with _channel(app) as channel:
        assert _tenants(_claim(channel, 10)) == [first, second]
        assert _claim(channel, 10) == []


def test_a_replayed_dead_letter_keeps_its_limit(app: Celery, database_url: str) -> None:
    from pgcelery.broker.dead_letters import replay

    limited_tasks.one_per_tenant.delay(tenant_id=str(uuid.uuid4()), label="x")
    limited_tasks.global_work.delay(label="unlimited")
    columns = "concurrency_key, concurrency_limit, rate_key, rate_interval, limit_task"
    with psycopg.connect(libpq(database_url), autocommit=True) as conn:
        before = conn.execute(f"SELECT {columns} FROM kombu_message ORDER BY id").fetchall()
        conn.execute(
            "INSERT INTO pgcelery_dead_letter (queue, payload, priority, deliveries, reason)"
            " SELECT 'celery', payload, priority, 5, 'test' FROM kombu_message ORDER BY id"
        )
        conn.execute("DELETE FROM kombu_message")
        assert len(replay(conn, Names(), None)) == 2
        after = conn.execute(f"SELECT {columns} FROM kombu_message ORDER BY id").fetchall()
    assert after == before
    assert after[0][0] is not None
