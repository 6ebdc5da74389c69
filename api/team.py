"""Team members and API keys: owners and admins manage them, each only below their role."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Email
from api.db import db
from api.schemas import (
    ApiKeyOut,
    AssignableRole,
    InvitationAnswer,
    InviteOut,
    ListOf,
    NewApiKeyOut,
    RemovalOut,
    TransferOut,
    UserOut,
    responds,
)
from api.security import current_account, current_user, require_key, require_role
from api.validation import json_body
from billing import accounts, team
from models import Invitation, utcnow
from settings import get_settings

bp = Blueprint("team", __name__, url_prefix="/v1")
log = logging.getLogger(__name__)


class InviteBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"email": "ed@example.com", "role": "editor"}]},
    )

    email: Email
    role: AssignableRole = "editor"
    name: str = Field(default="", max_length=200)


class RoleBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: AssignableRole


class TransferBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: str = Field(min_length=1, max_length=40)


class KeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(default="api key", min_length=1, max_length=100)


@bp.get("/team")
@responds(ListOf[UserOut])
@require_key
def list_team() -> dict[str, Any]:
    """The account's members."""
    users = accounts.list_users(db(), current_account().id)
    return {"data": [accounts.user_view(u) for u in users]}


@bp.post("/team/invite")
@responds(InviteOut, 201, errors=(409,))
@require_key
@require_role("manage_team")
@json_body(InviteBody)
def invite(body: InviteBody) -> tuple[dict[str, Any], int]:
    """Invite a member: a one-time token to set a password (their API key comes with
    the acceptance, to them only)."""
    settings = get_settings()
    made = team.invite_member(
        db(), current_account(), current_user(), body.email, body.role, body.name,
        now=utcnow(), ttl=timedelta(hours=settings.invitation_ttl_hours),
    )  # fmt: skip
    return {
        "user": accounts.user_view(made.user),
        "invitation": _shown(made.invitation, made.token),
    }, 201


@bp.post("/team/<id:user_id>/invitation")
@responds(InvitationAnswer, 201, errors=(409,))
@require_key
@require_role("manage_team")
def reissue_invitation(user_id: str) -> tuple[dict[str, Any], int]:
    """A new invitation for a member who has not joined; older tokens stop working."""
    settings = get_settings()
    invitation, token = team.reissue_invitation(
        db(), current_account().id, current_user(), user_id,
        now=utcnow(), ttl=timedelta(hours=settings.invitation_ttl_hours),
    )  # fmt: skip
    return {"invitation": _shown(invitation, token)}, 201


@bp.patch("/team/<id:user_id>")
@responds(UserOut)
@require_key
@require_role("manage_team")
@json_body(RoleBody)
def change_role(user_id: str, body: RoleBody) -> dict[str, Any]:
    """Change a member's role (below yours; only the owner makes admins)."""
    user = team.change_role(db(), current_account().id, current_user(), user_id, body.role)
    return accounts.user_view(user)


@bp.delete("/team/<id:user_id>")
@responds(RemovalOut)
@require_key
@require_role("manage_team")
def remove_member(user_id: str) -> dict[str, Any]:
    """Remove a member: their keys and login tokens stop working now; the seat frees."""
    removal = team.remove_member(db(), current_account().id, current_user(), user_id, utcnow())
    return {"removed": accounts.user_view(removal.user), "keys_revoked": removal.keys_revoked}


@bp.post("/team/transfer-ownership")
@responds(TransferOut, errors=(404, 409))
@require_key
@require_role("transfer_ownership")
@json_body(TransferBody)
def transfer_ownership(body: TransferBody) -> dict[str, Any]:
    """Hand the account to a member who has joined; you become an admin."""
    owner, previous = team.transfer_ownership(
        db(), current_account().id, current_user(), body.user_id
    )
    return {"owner": accounts.user_view(owner), "previous_owner": accounts.user_view(previous)}


def _shown(invitation: Invitation, token: str) -> dict[str, Any]:
    """The token leaves the server only in development (INVITE_TOKENS_IN_RESPONSE=1)."""
    if not get_settings().invite_tokens_in_response:
        return team.invitation_view(invitation)
    log.info("development: invitation token for user %s: %s", invitation.user_id, token)
    return team.invitation_view(invitation, token)


@bp.get("/keys")
@responds(ListOf[ApiKeyOut])
@require_key
@require_role("manage_keys")
def list_keys() -> dict[str, Any]:
    """The account's API keys, by prefix only."""
    keys = accounts.list_api_keys(db(), current_account().id)
    return {"data": [accounts.api_key_view(k) for k in keys]}


@bp.post("/keys")
@responds(NewApiKeyOut, 201)
@require_key
@require_role("manage_keys")
@json_body(KeyBody)
def create_key(body: KeyBody) -> tuple[dict[str, Any], int]:
    """A new key for you: shown once."""
    api_key, key = accounts.issue_api_key(db(), current_account().id, current_user(), body.name)
    return {**accounts.api_key_view(api_key), "api_key": key}, 201


@bp.delete("/keys/<key_id>")
@responds(ApiKeyOut)
@require_key
@require_role("manage_keys")
def revoke_key(key_id: str) -> dict[str, Any]:
    """Revoke one of your keys, or a key of a member below your role."""
    api_key = accounts.revoke_api_key(db(), current_account().id, current_user(), key_id)
    return accounts.api_key_view(api_key)
