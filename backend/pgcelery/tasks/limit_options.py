"""Concurrency and rate limits, the producer's side: the task options and the header they set.

``@app.task(concurrency_limit=2)`` lets at most two of the task run at once across every
worker; ``concurrency_key="tenant"`` makes that per tenant, and any other ``concurrency_key``
names an argument of the task (``"account_id"``), making it per value of that argument.
``global_rate_limit="10/s"`` (or ``/m``, ``/h``) lets at most that many start in any window of
the period across the fleet, per ``rate_limit_key`` (same forms) when one is given.

The limits travel with each message, in one header the broker copies into the message's row
(:func:`pgcelery.broker.limits.limit_columns`), so the claim can enforce them in the database
(:mod:`pgcelery.broker.claim_sql`). They are read from the task the sending app has
registered: a task sent by name from an app that does not define it carries no limit.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from typing import Any

from pgcelery.broker.limits import LIMIT_HEADER, TENANT_KEY
from pgcelery.exceptions import InvalidLimitOption

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([smh])\s*$")
_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
#: A key value longer than this is stored as its SHA-256 (the key column stays small).
_LONGEST_VALUE = 200


def rate_interval(spec: str) -> float:
    """Seconds between two starts for a rate such as ``"10/s"``, ``"30/m"`` or ``"100/h"``."""
    found = _RATE.match(spec) if isinstance(spec, str) else None
    if found is None or float(found.group(1)) <= 0:
        raise InvalidLimitOption(
            f"global_rate_limit={spec!r}: write a positive number of starts per second, minute "
            "or hour, such as '10/s', '30/m' or '100/h'"
        )
    return _PERIODS[found.group(2)] / float(found.group(1))


def limit_header(task: Any, name: str, args: Any, kwargs: Any) -> dict[str, Any] | None:
    """The header for a message of ``task`` (None when the task has no limit)."""
    concurrency = getattr(task, "concurrency_limit", None)
    rate = getattr(task, "global_rate_limit", None)
    if concurrency is None and rate is None:
        return None
    header: dict[str, Any] = {"task": name}
    if concurrency is not None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidLimitOption(
                f"concurrency_limit={concurrency!r} on task {name}: use a whole number of at "
                "least 1"
            )
        header["concurrency_limit"] = concurrency
        header["concurrency_key"] = _key(task, name, "concurrency_key", args, kwargs)
    if rate is not None:
        header["rate_interval"] = rate_interval(rate)
        header["rate_key"] = _key(task, name, "rate_limit_key", args, kwargs)
    return header


def _key(task: Any, name: str, option: str, args: Any, kwargs: Any) -> str:
    """The limit's key: the task name, with the tenant placeholder or an argument's value."""
    by = getattr(task, option, None)
    if by is None:
        return name
    if not isinstance(by, str) or not by:
        raise InvalidLimitOption(
            f"{option}={by!r} on task {name}: use 'tenant' or the name of one of its arguments"
        )
    if by == "tenant":
        return f"{name}|{TENANT_KEY}"
    value = json.dumps(_argument(task, by, args, kwargs), sort_keys=True, default=str)
    if len(value) > _LONGEST_VALUE:
        value = "sha256:" + hashlib.sha256(value.encode()).hexdigest()
    return f"{name}|{by}={value}"


def _argument(task: Any, by: str, args: Any, kwargs: Any) -> Any:
    """The value of the task's argument ``by`` in this call, passed by name or by position."""
    args, kwargs = list(args or ()), dict(kwargs or {})
    if by in kwargs:
        return kwargs[by]
    try:
        bound = inspect.signature(task.run).bind_partial(*args, **kwargs)
    except (TypeError, ValueError):
        return None
    return bound.arguments.get(by)


def with_limit_header(
    task: Any, name: str, args: Any, kwargs: Any, options: dict[str, Any]
) -> None:
    """Add the limit header to a send's ``options`` when its task has a limit."""
    header = limit_header(task, name, args, kwargs)
    if header is not None:
        options["headers"] = {**(options.get("headers") or {}), LIMIT_HEADER: header}
