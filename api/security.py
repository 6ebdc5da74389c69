"""Authentication (API keys and login tokens, one access check), roles, admin token."""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from flask import g, request

import logs
from api import ratelimit
from api.db import caller_read, end_caller_read
from api.errors import ApiError
from billing import accounts, permissions, policy
from billing.errors import NotFound
from models import Account, User
from settings import get_settings

P = ParamSpec("P")
R = TypeVar("R")


def current_account() -> Account:
    account: Account = g.account
    return account


def current_user() -> User:
    user: User = g.user
    return user


def policy_seen() -> policy.Seen:
    """What the caller's API-key read saw for the model policy (billing.policy.Seen)."""
    seen: policy.Seen = g.policy_seen
    return seen


def require_key(view: Callable[P, R]) -> Callable[P, R]:
    """`Authorization: Bearer <api key | login token>`, then the account's rate limit."""
    return _authenticated(view, choosing_plan=False)


def require_key_to_choose_plan(view: Callable[P, R]) -> Callable[P, R]:
    """`require_key` for the views an account needs to choose a plan (its account, the
    plan change): these also let in an account whose plan is missing or retired, which
    everywhere else gets 402 `subscription_required` (billing.accounts.check_access)."""
    return _authenticated(view, choosing_plan=True)


def _authenticated(view: Callable[P, R], *, choosing_plan: bool) -> Callable[P, R]:
    @functools.wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not bearer.strip():
            raise ApiError(
                401, "unauthorized", "Send your API key as 'Authorization: Bearer <key>'."
            )
        settings = get_settings()
        try:
            caller = accounts.authenticate(
                caller_read(),
                bearer.strip(),
                settings.secret_key,
                settings.login_token_ttl_seconds,
                choosing_plan=choosing_plan,
            )
        except NotFound as exc:
            raise ApiError(401, "invalid_api_key", exc.message) from None
        g.account, g.user = caller.account, caller.user
        g.policy_seen = policy.Seen(
            caller.catalog_version,
            caller.has_model_preferences is not False,
        )
        logs.bind(account_id=g.account.id)
        ratelimit.enforce(g.account)
        end_caller_read()
        return view(*args, **kwargs)

    wrapper.__dict__["openapi_auth"] = "apiKey"
    return wrapper


def require_role(action: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """After `require_key`: the caller's role must allow `action` (billing.permissions)."""

    def decorate(view: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(view)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            permissions.require(current_user().role, action)
            return view(*args, **kwargs)

        wrapper.__dict__["openapi_action"] = action
        return wrapper

    return decorate


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

    wrapper.__dict__["openapi_auth"] = "adminToken"
    return wrapper
