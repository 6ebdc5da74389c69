"""Who may do what inside an account: owner > admin > editor > viewer.

Two kinds of rule: an action needs a least role (`require`), and acting on another
member or on a member's key needs a higher role than theirs (`require_outranks`), so an
admin cannot touch the owner or another admin, and nobody can lock the owner out.
"""

from __future__ import annotations

from billing.errors import Forbidden, InvalidInput
from models.account import USER_ROLES

ROLES = USER_ROLES
_RANK = {"viewer": 0, "editor": 1, "admin": 2, "owner": 3}

# action -> the least role allowed to do it
ACTIONS = {
    "read": "viewer",
    "submit_jobs": "editor",
    "manage_keywords": "editor",
    "research_keywords": "editor",
    "manage_sites": "admin",
    "manage_keys": "admin",
    "manage_team": "admin",
    "manage_billing": "admin",
    "manage_settings": "admin",
    "manage_account": "owner",
    "transfer_ownership": "owner",
    "manage_plan": "owner",
    "manage_budget": "owner",
}
# The least role that may give a member each role; `owner` only moves by a transfer.
GRANTABLE_BY = {"viewer": "admin", "editor": "admin", "admin": "owner"}


def rank(role: str | None) -> int:
    """A key without a member (its member was removed) ranks below everyone."""
    return _RANK.get(role or "", -1)


def require(role: str, action: str) -> None:
    _require_rank(role, ACTIONS[action], action.replace("_", " "))


def _require_rank(role: str, needed: str, doing: str) -> None:
    if rank(role) < _RANK[needed]:
        raise Forbidden(
            f"Your role ({role}) cannot {doing}; it needs {needed} or above.",
            role=role,
            required_role=needed,
        )


def require_outranks(role: str, target_role: str | None, what: str) -> None:
    """Acting on `what` (a member, a key) that belongs to `target_role` needs a higher role."""
    if rank(role) <= rank(target_role):
        raise Forbidden(
            f"Your role ({role}) cannot change {what} of a member whose role is {target_role}; "
            "only a higher role can.",
            role=role,
            target_role=target_role,
        )


def require_can_grant(role: str, new_role: str) -> None:
    """Giving `new_role` to a member: admins hand out editor and viewer, only the owner
    makes admins, and nobody makes an owner except by transferring ownership."""
    if new_role not in GRANTABLE_BY:
        raise InvalidInput(
            "role must be admin, editor or viewer; ownership moves only by a transfer "
            "(POST /v1/team/transfer-ownership).",
            fields={"role": "admin|editor|viewer"},
        )
    _require_rank(role, GRANTABLE_BY[new_role], f"make a member {new_role}")
