"""Registration (a free trial, or a paid plan waiting for its first payment) and login,
both throttled per client address and per email (api/auth_throttle.py)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from flask import Blueprint
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from api import auth_throttle
from api.db import db
from api.errors import ApiError
from api.payments import with_checkout
from api.schemas import JoinedOut, LoginOut, RegisterOut, responds
from api.validation import json_body
from billing import accounts, subscriptions, team
from billing.errors import NotFound
from billing.text import BLANK_CLASS, BLANKS
from models import utcnow
from settings import get_settings

bp = Blueprint("auth", __name__, url_prefix="/v1/auth")

_PART = f"[^@{BLANK_CLASS}]+"
_ADDRESS = re.compile(f"{_PART}@{_PART}\\.{_PART}")


def _address(value: str) -> str:
    if not _ADDRESS.fullmatch(value):
        raise ValueError("must be an email address")
    return value


# At most 320 characters as sent; blanks around the address are trimmed.
Email = Annotated[
    str,
    Field(
        max_length=320,
        json_schema_extra={
            "pattern": f"^[{BLANK_CLASS}]*{_PART}@{_PART}\\.{_PART}[{BLANK_CLASS}]*$"
        },
    ),
    AfterValidator(lambda value: _address(value.strip(BLANKS))),
]


class RegisterBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"email": "me@example.com", "password": "a long password"}]
        },
    )

    email: Email
    password: str = Field(min_length=8, max_length=200)
    name: str = Field(default="", max_length=200)
    plan: str | None = Field(
        default=None,
        min_length=1,
        max_length=50,
        description="A free plan (default `free-trial`) or a paid one, paid before use.",
        json_schema_extra={"x-choices": "public_plans"},
    )


@bp.post("/register")
@responds(RegisterOut, 201, errors=(409, 429))
@json_body(RegisterBody)
def register(body: RegisterBody) -> tuple[dict[str, Any], int]:
    """A free plan: a trial with its credits. A paid plan: `pending_payment` and the
    first payment to make (`purchase`, with a Stripe Checkout URL when configured)."""
    auth_throttle.check_register(body.email)
    session = db()
    signup = subscriptions.sign_up(
        session, body.email, body.password, body.name, get_settings().trial_days, body.plan
    )
    if signup.registration.account.status == "trial":
        auth_throttle.claim_trial()
    answer: dict[str, Any] = {
        "account": accounts.account_view(session, signup.registration.account),
        "api_key": signup.registration.api_key,
    }
    if signup.purchase is not None:
        answer["purchase"] = with_checkout(signup.purchase, must_succeed=False)
    return answer, 201


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=200)


@bp.post("/login")
@responds(LoginOut, errors=(401, 429))
@json_body(LoginBody)
def login(body: LoginBody) -> dict[str, Any]:
    """Email + password -> a login token usable as `Authorization: Bearer tok_...`."""
    settings = get_settings()
    auth_throttle.check_login(body.email)
    try:
        user, token = accounts.login(db(), body.email, body.password, settings.secret_key)
    except NotFound as exc:
        auth_throttle.login_failed(body.email)
        raise ApiError(401, "invalid_credentials", exc.message) from None
    auth_throttle.login_succeeded(body.email)
    return {
        "token": token,
        "expires_in": settings.login_token_ttl_seconds,
        "user": accounts.user_view(user),
    }


class AcceptBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    token: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=8, max_length=200)
    name: str | None = Field(default=None, max_length=200)


@bp.post("/accept-invitation")
@responds(JoinedOut, errors=(404, 409, 410))
@json_body(AcceptBody)
def accept_invitation(body: AcceptBody) -> dict[str, Any]:
    """Set a password with the invitation's one-time token; answers with a login token
    and the member's first API key (shown once)."""
    settings = get_settings()
    joined = team.accept_invitation(db(), body.token, body.password, body.name, utcnow())
    return {
        "token": accounts.issue_login_token(joined.user, settings.secret_key),
        "expires_in": settings.login_token_ttl_seconds,
        "user": accounts.user_view(joined.user),
        "api_key": joined.api_key,
    }
