"""Domain errors. Each carries a stable `code`; the API maps codes to HTTP statuses."""

from __future__ import annotations

from typing import Any


class BillingError(Exception):
    code = "billing_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidInput(BillingError):
    code = "invalid_request"


class NotFound(BillingError):
    code = "not_found"


class Conflict(BillingError):
    code = "conflict"


class IdempotencyConflict(Conflict):
    code = "idempotency_conflict"


class JobNotCancellable(Conflict):
    code = "job_not_cancellable"


class DuplicateReference(Conflict):
    code = "duplicate_reference"


class AlreadyExists(Conflict):
    code = "already_exists"


class EmailTaken(Conflict):
    code = "email_taken"


class InvitationUsed(Conflict):
    code = "invitation_used"


class InvitationGone(BillingError):
    """Expired, or replaced by a newer invitation: the inviter must send a new one."""

    code = "invitation_expired"


class AmountMismatch(BillingError):
    """A payment that does not match what it pays for (needs an explicit override)."""

    code = "amount_mismatch"  # 409: the transfer conflicts with the plan's price


class InsufficientCredits(BillingError):
    code = "insufficient_credits"

    def __init__(self, required: int, available: int, message: str = "") -> None:
        super().__init__(
            message
            or f"This job needs up to {required} credits but only {available} are available.",
            required=required,
            available=available,
        )


class AutomationNotCancellable(Conflict):
    code = "automation_not_cancellable"


class AccountInactive(BillingError):
    """Suspended or cancelled: refused on every auth path."""

    def __init__(self, status: str) -> None:
        self.code = f"account_{status}"
        super().__init__(f"Account is {status}. Please contact support.", status=status)


class SubscriptionRequired(BillingError):
    code = "subscription_required"


class ModelNotAllowed(BillingError):
    code = "model_not_allowed"


class LimitReached(BillingError):
    code = "limit_reached"


class Forbidden(BillingError):
    code = "forbidden"


class BudgetExceeded(BillingError):
    """The hold would push this period's spending past a budget the owner set."""

    code = "budget_exceeded"


class PlanTooSmall(BillingError):
    """A downgrade the account's sites, users or keywords do not fit in."""

    code = "plan_limits_exceeded"


class PurchaseNotPending(Conflict):
    code = "purchase_not_pending"
