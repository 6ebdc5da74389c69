"""Decimal amounts in request bodies (prices, payments, CPCs): sent as text, `"149.00"`.

Money never travels as a JSON number (a float to most clients). One type per amount
says how many decimals it takes and its range, and publishes the same rule as a JSON
Schema pattern, so the OpenAPI document and the validation cannot disagree.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, WithJsonSchema


def _text_only(value: Any) -> Any:
    """A JSON number (int or float) is refused; text and stored Decimals pass."""
    if isinstance(value, bool | int | float):
        raise ValueError('send the amount as text, such as "12.50"')
    return value


def _rules(digits: int, places: int, positive: bool = False) -> tuple[Any, Any]:
    """The validation and the JSON Schema of an amount of at most `digits` digits before
    the point and `places` after it, not negative (above 0 when `positive`)."""
    maximum = Decimal(10**digits) - Decimal(1).scaleb(-places)
    bounds: dict[str, Any] = {"gt": 0} if positive else {"ge": 0}
    fraction = rf"(\.[0-9]{{1,{places}}})?"
    nonzero = "(?=.*[1-9])" if positive else ""
    rules = Field(le=maximum, decimal_places=places, allow_inf_nan=False, strict=False, **bounds)
    schema = WithJsonSchema(
        {
            "type": "string",
            "pattern": rf"^{nonzero}[0-9]{{1,{digits}}}{fraction}$",
            "examples": ["12.50"],
            "description": f"A decimal as text, at most {places} decimals.",
        }
    )
    return rules, schema


_PRICE = _rules(8, 2)
_CREDIT_PRICE = _rules(4, 6, positive=True)
_PAYMENT = _rules(10, 2, positive=True)

# A plan's price (Numeric(10, 2)) and a keyword's CPC.
Price = Annotated[Decimal, BeforeValidator(_text_only), _PRICE[0], _PRICE[1]]
# USD per top-up credit (Numeric(10, 6)).
CreditPrice = Annotated[Decimal, BeforeValidator(_text_only), _CREDIT_PRICE[0], _CREDIT_PRICE[1]]
# A payment received (a bank transfer's amount).
Payment = Annotated[Decimal, BeforeValidator(_text_only), _PAYMENT[0], _PAYMENT[1]]
