"""The normalised email behind "one account per mailbox"."""

from __future__ import annotations

import pytest

from billing.emails import normalize_email


@pytest.mark.parametrize(
    ("email", "normalized"),
    [
        ("ab@gmail.com", "ab@gmail.com"),
        ("A.B+x@gmail.com", "ab@gmail.com"),
        (" a.b+promo+2@GoogleMail.com ", "ab@gmail.com"),
        ("first.last+news@outlook.com", "first.last@outlook.com"),
        ("First.Last@Hotmail.com", "first.last@outlook.com"),
        ("jo.doe+tag@fastmail.com", "jo.doe@fastmail.com"),
        # Elsewhere dots and plus signs may be part of a real, different address.
        ("A.B+x@example.com", "a.b+x@example.com"),
        ("a.b@example.com", "a.b@example.com"),
    ],
)
def test_normalize_email(email: str, normalized: str) -> None:
    assert normalize_email(email) == normalized
