"""Authentication: API keys for accounts, a shared token for admin endpoints."""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from flask import g, request

from api.db import db
from api.errors import ApiError
from billing import accounts
from billing.errors import NotFound
from models import Account
from settings import get_settings

P = ParamSpec("P")
R = TypeVar("R")


def current_account() -> Account:
    account: Account = g.account
    return account


def require_key(view: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(
                401, "unauthorized", "Send your API key as 'Authorization: Bearer <key>'."
            )
        try:
            g.account, g.user = accounts.authenticate_api_key(db(), key.strip())
        except NotFound:
            raise ApiError(401, "invalid_api_key", "The API key is invalid or revoked.") from None
        return view(*args, **kwargs)

    return wrapper


def require_admin(view: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        expected = get_settings().admin_token
        given = request.headers.get("X-Admin-Token", "")
        if not expected:
            raise ApiError(401, "unauthorized", "Admin API is disabled: ADMIN_TOKEN is not set.")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ApiError(401, "unauthorized", "Missing or wrong X-Admin-Token.")
        return view(*args, **kwargs)

    return wrapper
