"""A task's limit options become the header its messages carry, and the header the row's
limit columns: keys per tenant and per argument, rates, and the errors for bad options."""

from __future__ import annotations

from typing import Any

import pytest

from pgcelery.broker.claim_sql import ROW, FairCursors
from pgcelery.broker.limits import LIMIT_HEADER, TENANT_HEADER, LimitColumns, limit_columns
from pgcelery.exceptions import InvalidLimitOption
from pgcelery.tasks.limit_options import limit_header, rate_interval, with_limit_header


class Task:
    def __init__(self, **options: Any) -> None:
        self.__dict__.update(options)

    def run(self, account_id: int, note: str = "") -> None: ...


def _message(header: dict[str, Any] | None, tenant: str | None = None) -> dict[str, Any]:
    headers: dict[str, Any] = {} if header is None else {LIMIT_HEADER: header}
    if tenant is not None:
        headers[TENANT_HEADER] = tenant
    return {"headers": headers}


@pytest.mark.parametrize(
    ("spec", "seconds"), [("10/s", 0.1), ("30/m", 2.0), ("100/h", 36.0), (" 2.5 / s ", 0.4)]
)
def test_rates_are_seconds_between_starts(spec: str, seconds: float) -> None:
    assert rate_interval(spec) == pytest.approx(seconds)


@pytest.mark.parametrize("spec", ["10", "10/d", "0/s", "-1/s", "ten/s", ""])
def test_a_bad_rate_names_the_option_and_the_forms(spec: str) -> None:
    with pytest.raises(InvalidLimitOption, match=r"global_rate_limit=.*'10/s'"):
        rate_interval(spec)


def test_a_task_without_limits_sends_no_header() -> None:
    options: dict[str, Any] = {}
    with_limit_header(Task(), "t", (), {}, options)
    assert options == {}


def test_a_concurrency_limit_is_keyed_by_the_task_name() -> None:
    header = limit_header(Task(concurrency_limit=2), "t", (), {})
    assert header == {"task": "t", "concurrency_limit": 2, "concurrency_key": "t"}
    assert limit_columns(_message(header)) == LimitColumns("t", 2, None, None, "t")


def test_a_per_tenant_key_takes_the_tenant_of_the_message() -> None:
    task = Task(concurrency_limit=1, concurrency_key="tenant", global_rate_limit="5/s")
    header = limit_header(task, "t", (), {})
    columns = limit_columns(_message(header, "b9b1"))
    assert columns.concurrency_key == "t|tenant=b9b1"
    assert columns.rate_key == "t"
    assert columns.rate_interval == pytest.approx(0.2)


def test_a_per_argument_key_reads_the_argument_by_name_or_position() -> None:
    task = Task(concurrency_limit=1, concurrency_key="account_id", rate_limit_key="note",
                global_rate_limit="1/s")  # fmt: skip
    by_name = limit_header(task, "t", (), {"account_id": 7, "note": "x"})
    by_position = limit_header(task, "t", (7, "x"), {})
    assert by_name == by_position
    assert by_name is not None
    assert by_name["concurrency_key"] == "t|account_id=7"
    assert by_name["rate_key"] == 't|note="x"'


def test_a_long_argument_value_is_hashed() -> None:
    task = Task(concurrency_limit=1, concurrency_key="account_id")
    header = limit_header(task, "t", ("x" * 500,), {})
    assert header is not None
    assert header["concurrency_key"].startswith("t|account_id=sha256:")
    assert len(header["concurrency_key"]) < 100


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "2"])
def test_a_bad_concurrency_limit_is_refused(limit: Any) -> None:
    with pytest.raises(InvalidLimitOption, match="concurrency_limit"):
        limit_header(Task(concurrency_limit=limit), "t", (), {})


def test_a_bad_key_is_refused() -> None:
    with pytest.raises(InvalidLimitOption, match="concurrency_key"):
        limit_header(Task(concurrency_limit=1, concurrency_key=""), "t", (), {})


@pytest.mark.parametrize("header", [None, "x", {"concurrency_limit": "many"}])
def test_a_message_without_a_usable_header_is_unlimited(header: Any) -> None:
    assert limit_columns(_message(header)) == LimitColumns()


def test_the_cursor_follows_the_last_message_of_each_queue() -> None:
    def row(queue: int, group: str | None, seq: int | None, turn: int | None) -> tuple[Any, ...]:
        values = dict.fromkeys(ROW)
        values.update(id=1, queue_id=queue, grp=group, seq=seq, turn=turn)
        return tuple(values.values())

    cursors = FairCursors()
    cursors.advance([row(1, "b", 2, 2), row(1, "a", 1, 1), row(2, None, None, None)])
    cursors.stopped(2, "k")
    assert cursors.params([1, 2]) == {
        "afters": ["b", None],
        "useds": [2, 0],
        "limited_afters": [None, "k"],
    }
