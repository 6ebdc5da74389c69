"""Registration: a free-trial account, its owner, its first API key (shown once)."""

from __future__ import annotations

from typing import Annotated, Any

from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from api.db import db
from api.validation import parse_body
from billing import accounts
from settings import get_settings

bp = Blueprint("auth", __name__, url_prefix="/v1/auth")

Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
]


class RegisterBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    email: Email
    password: str = Field(min_length=8, max_length=200)
    name: str = Field(default="", max_length=200)


@bp.post("/register")
def register() -> tuple[dict[str, Any], int]:
    body = parse_body(RegisterBody)
    session = db()
    registration = accounts.register(
        session, body.email, body.password, body.name, get_settings().trial_days
    )
    return {
        "account": accounts.account_view(session, registration.account),
        "api_key": registration.api_key,
    }, 201
