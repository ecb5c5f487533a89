"""Typed payloads: validation errors name the fields and never echo the values."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field

from pgcelery.exceptions import PayloadInvalid
from pgcelery.tenancy.payloads import keyword_values, validate


class Transfer(BaseModel):
    account: str
    amount_cents: int = Field(ge=1)


def test_an_invalid_payload_names_every_bad_field_without_its_value() -> None:
    with pytest.raises(PayloadInvalid) as caught:
        validate("bank.transfer", Transfer, {"amount_cents": -99})
    message = str(caught.value)
    assert message.startswith("Invalid payload for task bank.transfer: ")
    assert "account: Field required" in message
    assert "amount_cents: Input should be greater than or equal to 1" in message
    assert "-99" not in message


def test_a_valid_payload_becomes_the_model() -> None:
    assert validate("t", Transfer, {"account": "x", "amount_cents": 5}) == Transfer(
        account="x", amount_cents=5
    )


def test_a_model_instance_becomes_keywords_and_positional_values_are_refused() -> None:
    instance = Transfer(account="x", amount_cents=5)
    assert keyword_values("t", Transfer, (instance,), None) == {"account": "x", "amount_cents": 5}
    with pytest.raises(PayloadInvalid, match="keyword arguments"):
        keyword_values("t", Transfer, ("x", 5), None)
