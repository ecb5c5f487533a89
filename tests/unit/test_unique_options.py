"""The unique options of a send: read from the send, then from the task; checked before sending."""

from __future__ import annotations

from typing import Any

import pytest

from pgcelery.exceptions import InvalidUniqueOption
from pgcelery.tasks.unique import unique_request


class KeyedTask:
    unique_key = staticmethod(lambda user, **_: None if user == "anyone" else f"user:{user}")
    unique_for = 30
    unique_mode = "replace"


class PlainTask:
    pass


def test_no_key_is_not_unique_and_leaves_other_options() -> None:
    options: dict[str, Any] = {"queue": "q", "unique_key": None}
    assert unique_request("t", PlainTask(), (), {}, options) is None
    assert options == {"queue": "q"}


def test_the_tasks_callable_gets_the_arguments() -> None:
    found = unique_request("t", KeyedTask(), ("ann",), {"n": 1}, {})
    assert found is not None
    assert (found.task, found.key, found.unique_for, found.mode) == (
        "t",
        "user:ann",
        30.0,
        "replace",
    )
    assert unique_request("t", KeyedTask(), ("anyone",), {}, {}) is None


def test_the_sends_options_win() -> None:
    options = {"unique_key": 42, "unique_for": 0, "unique_mode": "keep"}
    found = unique_request("t", KeyedTask(), ("ann",), {}, options)
    assert found is not None
    assert (found.key, found.unique_for, found.mode) == ("42", 0.0, "keep")
    assert options == {}


@pytest.mark.parametrize(
    "options",
    [
        {"unique_key": ""},
        {"unique_key": ["a"]},
        {"unique_key": True},
        {"unique_key": "k", "unique_for": -1},
        {"unique_key": "k", "unique_for": float("inf")},
        {"unique_key": "k", "unique_for": "5"},
        {"unique_key": "k", "unique_mode": "debounce"},
    ],
)
def test_bad_values_are_named_errors(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidUniqueOption):
        unique_request("t", PlainTask(), (), {}, options)
