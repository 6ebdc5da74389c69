"""Who may do what inside an account: owner > admin > editor > viewer."""

from __future__ import annotations

from billing.errors import Forbidden
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
    "manage_plan": "owner",
    "manage_budget": "owner",
}


def require(role: str, action: str) -> None:
    needed = ACTIONS[action]
    if _RANK.get(role, -1) < _RANK[needed]:
        raise Forbidden(
            f"Your role ({role}) cannot {action.replace('_', ' ')}; it needs {needed} or above.",
            role=role,
            required_role=needed,
        )
