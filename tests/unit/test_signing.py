"""Signatures of tenant headers: what they cover, and the broker's copy of the header name."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from pgcelery.broker import limits
from pgcelery.exceptions import ForgedMessage
from pgcelery.tenancy import TENANT_HEADER, signing
from pgcelery.tenancy.tasks import CORRELATION_HEADER


@pytest.fixture
def key() -> Iterator[None]:
    signing.configure("unit-test-key")
    yield
    signing.configure("")


def _signed(**extra: str) -> dict[str, str]:
    headers = {"id": str(uuid.uuid4()), "task": "t", TENANT_HEADER: str(uuid.uuid4()), **extra}
    signing.sign(headers, TENANT_HEADER, CORRELATION_HEADER)
    return headers


def _check(headers: dict[str, str]) -> None:
    signing.check(
        headers["id"],
        headers["task"],
        headers.get(TENANT_HEADER),
        headers.get(CORRELATION_HEADER),
        headers.get(signing.SIGNATURE_HEADER),
    )


@pytest.mark.usefixtures("key")
@pytest.mark.parametrize("field", ["id", "task", TENANT_HEADER, CORRELATION_HEADER])
def test_the_signature_covers_each_field(field: str) -> None:
    headers = _signed(**{CORRELATION_HEADER: "request-1"})
    _check(headers)
    headers[field] = headers[field] + "x"
    with pytest.raises(ForgedMessage):
        _check(headers)


def test_without_a_key_nothing_is_signed_or_checked() -> None:
    signing.configure("")
    headers = _signed()
    assert signing.SIGNATURE_HEADER not in headers
    _check(headers)


def test_the_broker_names_the_same_tenant_header() -> None:
    assert limits.TENANT_HEADER == TENANT_HEADER
