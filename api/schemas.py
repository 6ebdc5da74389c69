"""Response models: the shape of what each view answers, for the OpenAPI document.

Views keep returning the dicts the billing `*_view` functions build; `@responds(Model)`
attaches the model that describes them, and tests validate real answers against the
published schemas (tests/api/test_schemas_api.py), so a view that drifts fails there.
Models allow fields they do not name (bodies may carry more, shared/API.md); the tests
also refuse a field a model does not declare, so a new field gets documented.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from billing.operations import OPERATIONS
from models import JOB_STATUSES, RUN_STATUSES, UNBILLED_REASONS
from models.account import ACCOUNT_STATUSES, USER_ROLES
from models.purchase import PURCHASE_STATUSES

R = TypeVar("R")
T = TypeVar("T")

DecimalString = Annotated[
    str, Field(pattern=r"^-?[0-9]+(\.[0-9]+)?$", description="A decimal number as text.")
]
Timestamp = Annotated[datetime, Field(description="ISO 8601 with its UTC offset.")]
JobStatus = Literal[JOB_STATUSES]  # type: ignore[valid-type]
AccountStatus = Literal[ACCOUNT_STATUSES]  # type: ignore[valid-type]
PurchaseStatus = Literal[PURCHASE_STATUSES]  # type: ignore[valid-type]
Role = Literal[USER_ROLES]  # type: ignore[valid-type]
# Nobody is made owner but by a transfer (billing/team.py says so when asked).
AssignableRole = Annotated[
    str,
    Field(max_length=20, json_schema_extra={"enum": [r for r in USER_ROLES if r != "owner"]}),
]
OperationName = Literal[tuple(OPERATIONS)]  # type: ignore[valid-type]
UnbilledReason = Literal[UNBILLED_REASONS]  # type: ignore[valid-type]


class Out(BaseModel):
    """A response body (described, never used to build one)."""

    model_config = ConfigDict(extra="allow")


# --- generic shapes ---------------------------------------------------------------------


class Page(Out, Generic[T]):
    """One page of a cursor-paged listing: pass `next_cursor` back as `?cursor=` until it
    is null."""

    data: list[T]
    next_cursor: str | None = Field(description="Opaque; null on the last page.")

    @classmethod
    def model_parametrized_name(cls, params: tuple[type[Any], ...]) -> str:
        return f"{params[0].__name__.removesuffix('Out')}Page"


class ListOf(Out, Generic[T]):
    """A whole (short) list."""

    data: list[T]

    @classmethod
    def model_parametrized_name(cls, params: tuple[type[Any], ...]) -> str:
        return f"{params[0].__name__.removesuffix('Out')}List"


class ErrorDetail(Out):
    code: str = Field(description="Stable, machine-readable (`insufficient_credits`, ...).")
    message: str = Field(description="For people.")
    fields: dict[str, str] | None = Field(
        default=None, description="422: what is wrong with each field (dotted path)."
    )


class ErrorOut(Out):
    """Every error: `{"error": {"code", "message", ...details}}`."""

    error: ErrorDetail


# --- accounts, plans, members -------------------------------------------------------------


class PlanOut(Out):
    slug: str
    name: str
    price: DecimalString
    billing_cycle: str
    included_credits: int
    max_sites: int | None = Field(description="null: unlimited.")
    max_users: int | None
    max_keywords: int | None
    max_ahrefs_queries: int | None
    allow_credit_topup: bool
    extra_credit_price: DecimalString | None = Field(description="USD per top-up credit.")
    features: list[str]
    force_default_models: bool
    allowed_text_models: list[str]
    allowed_image_models: list[str]
    requests_per_minute: int
    max_concurrent_jobs: int = Field(description="Jobs of the account running at once.")
    is_internal: bool
    is_active: bool


class CreditsOut(Out):
    balance: int
    reserved: int = Field(description="Held by jobs not yet finished.")
    available: int = Field(description="balance - reserved.")


class LimitOut(Out):
    used: int
    limit: int | None = Field(description="null: unlimited.")


class LimitsOut(Out):
    sites: LimitOut
    users: LimitOut
    keywords: LimitOut
    ahrefs_queries: LimitOut


class ConcurrencyOut(Out):
    running: int = Field(description="Jobs holding a slot (dispatched or running).")
    limit: int = Field(description="The plan's max_concurrent_jobs.")
    queued: int = Field(description="Jobs waiting for a slot.")


class AccountOut(Out):
    id: str
    name: str
    status: AccountStatus
    plan: PlanOut | None
    credits: CreditsOut
    limits: LimitsOut
    trial_ends_at: Timestamp | None
    period_start: Timestamp | None
    period_end: Timestamp | None
    paid_until: Timestamp | None
    timezone: str | None
    payment_method: str | None
    scheduled_plan: str | None = Field(description="A downgrade waiting for the period end.")
    created_at: Timestamp
    concurrency: ConcurrencyOut = Field(description="Jobs running now and the plan's cap.")


class UserOut(Out):
    id: str
    email: str
    name: str
    role: Role
    status: Literal["active", "invited"]
    joined_at: Timestamp | None
    created_at: Timestamp


class ApiKeyOut(Out):
    """Never the key itself, only its prefix."""

    id: str
    name: str
    prefix: str
    user_id: str | None
    created_at: Timestamp
    revoked_at: Timestamp | None


class NewApiKeyOut(ApiKeyOut):
    api_key: str = Field(description="The key itself: shown once.")


class PurchaseOut(Out):
    id: str
    account_id: str
    kind: Literal["credits", "subscription"]
    status: PurchaseStatus
    credits: int
    amount: DecimalString
    currency: str
    plan: str | None
    period_months: int | None
    method: str | None
    payment_reference: str | None
    checkout_url: str | None = Field(description="Stripe Checkout, while pending.")
    failure_reason: str | None
    created_at: Timestamp
    confirmed_at: Timestamp | None
    failed_at: Timestamp | None


class PurchaseAnswer(Out):
    purchase: PurchaseOut


class RegisterOut(Out):
    account: AccountOut
    api_key: str = Field(description="Shown once: keep it.")
    purchase: PurchaseOut | None = Field(default=None, description="A paid plan's first payment.")


class LoginOut(Out):
    token: str = Field(description="`tok_...`, usable as `Authorization: Bearer`.")
    expires_in: int = Field(description="Seconds.")
    user: UserOut


class PlanChangeDetail(Out):
    kind: Literal["upgrade", "downgrade", "renewal", "kept"]
    plan: str
    effective_at: Timestamp | None
    purchase: PurchaseOut | None


class PlanChangeOut(Out):
    change: PlanChangeDetail
    account: AccountOut


class BudgetUsedOut(Out):
    monthly: int
    per_operation: dict[str, int]


class BudgetOut(Out):
    monthly_credits: int | None
    per_operation: dict[str, int]
    period_start: Timestamp | None
    period_end: Timestamp | None
    used: BudgetUsedOut


class InvitationOut(Out):
    id: str
    user_id: str
    expires_at: Timestamp
    token: str | None = Field(default=None, description="Development only.")


class InviteOut(Out):
    user: UserOut
    invitation: InvitationOut


class JoinedOut(LoginOut):
    api_key: str = Field(description="The member's first API key, shown once.")


class InvitationAnswer(Out):
    invitation: InvitationOut


class RemovalOut(Out):
    removed: UserOut
    keys_revoked: int


class TransferOut(Out):
    owner: UserOut
    previous_owner: UserOut


# --- jobs, credits ------------------------------------------------------------------------


class JobErrorOut(Out):
    code: str
    message: str | None


class JobOut(Out):
    id: str
    status: JobStatus
    operation: OperationName
    model: str
    site_id: str | None
    input: dict[str, Any]
    reserved_credits: int = Field(description="The hold taken at submission.")
    credits_charged: int | None = Field(description="Set once the job settled.")
    result: dict[str, Any] | None
    error: JobErrorOut | None
    attempts: int
    webhook_url: str | None
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    cancel_requested_at: Timestamp | None = Field(
        description="A running job asked to stop: it ends at the worker's next safe point."
    )
    automation_id: str | None = Field(description="The automation run that made it.")


class AdminJobOut(JobOut):
    account_id: str


class EstimateOut(Out):
    operation: OperationName
    model: str
    credits: int = Field(description="The hold a submission would take now.")
    affordable: bool = Field(description="A spending status, the credits and the budgets allow it.")
    available: int
    within_budget: bool


RunStatus = Literal[RUN_STATUSES]  # type: ignore[valid-type]


class AutomationSubmittedOut(Out):
    id: str
    status: RunStatus
    reserved_credits: int = Field(description="The run's worst case, held at submission.")


class StageCountsOut(Out):
    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int


class AutomationOut(AutomationSubmittedOut):
    credits_charged: int = Field(description="Charged to its jobs so far (each <= its hold).")
    released_credits: int = Field(description="Given back: unused parts of the hold.")
    held_credits: int = Field(description="Still held for open or future jobs.")
    site_id: str | None
    keywords: list[str]
    options: dict[str, Any]
    stages: dict[str, StageCountsOut]
    skipped_children: int = Field(description="Outputs that could not make their child job.")
    items: dict[str, list[int]] | None = Field(
        default=None, description="Ids of the clusters, ideas, articles, prompts, images."
    )
    jobs_url: str
    webhook_url: str | None
    created_at: Timestamp
    finished_at: Timestamp | None
    cancel_requested_at: Timestamp | None


class StagePlanOut(Out):
    model: str
    max_jobs: int
    credits_per_job: int


class AutomationEstimateOut(Out):
    credits: int = Field(description="The hold a run would take now: its worst case.")
    available: int
    affordable: bool = Field(description="A spending status, the credits and the budgets allow it.")
    within_budget: bool
    stages: dict[str, StagePlanOut]


class TransactionOut(Out):
    id: int
    type: str
    amount: int
    balance_after: int
    description: str
    job_id: str | None
    reference: str | None
    metadata: dict[str, Any]
    created_at: Timestamp


class AccountDetailOut(AccountOut):
    users: list[UserOut]
    api_keys: list[ApiKeyOut]
    recent_jobs: list[JobOut]
    recent_transactions: list[TransactionOut]


class BankTransferOut(AccountOut):
    transaction: TransactionOut


class ConfirmOut(PurchaseAnswer):
    granted: bool = Field(description="False when it was paid already (nothing granted).")


class SyncOut(PurchaseAnswer):
    outcome: str


class UnbilledOut(Out):
    id: int
    account_id: str
    job_id: str | None
    operation: str
    model: str
    tokens_input: int
    tokens_output: int
    images: int
    credits: int
    cost_usd: DecimalString
    reason: UnbilledReason
    created_at: Timestamp


class UnbilledTotalsOut(Out):
    count: int
    credits: int
    cost_usd: DecimalString
    by_reason: dict[str, int]


class UnbilledPage(Page[UnbilledOut]):
    totals: UnbilledTotalsOut


class RateOut(Out):
    rpm: int = Field(description="Requests per window; 0: no limit.")
    tpm: int = Field(description="Tokens per window; 0: no limit.")


class ProviderLimitOut(RateOut):
    model: str
    source: Literal["env", "override"]


class ProviderLimitsOut(Out):
    window_seconds: int
    default: RateOut
    data: list[ProviderLimitOut]


class StripeEventOut(Out):
    received: bool
    outcome: str


# --- workspace ----------------------------------------------------------------------------


class SiteOut(Out):
    id: str
    name: str
    domain: str | None
    status: Literal["active", "deleted"]
    deleted_at: Timestamp | None
    created_at: Timestamp


class SiteDeletionOut(Out):
    site: SiteOut
    keywords_deleted: int


class KeywordOut(Out):
    id: int
    site_id: str
    keyword: str
    volume: int | None
    difficulty: int | None
    cpc: DecimalString | None
    country: str | None
    intent: str | None
    created_at: Timestamp


class KeywordsAdded(Out):
    added: list[KeywordOut]
    skipped: list[str] = Field(description="Keywords the site had already.")


class ResearchKeywordOut(Out):
    keyword: str
    volume: int | None
    difficulty: int | None
    cpc: DecimalString | None
    country: str


class QueriesOut(Out):
    used: int
    limit: int | None


class ResearchOut(Out):
    seed: str
    keywords: list[ResearchKeywordOut]
    queries: QueriesOut


class LibraryKeywordOut(Out):
    id: int
    keyword: str
    country: str
    volume: int | None
    difficulty: int | None
    cpc: DecimalString | None
    intent: str | None
    topic: str | None
    updated_at: Timestamp


class ImportOut(Out):
    rows: int
    inserted: int
    updated: int
    unchanged: int


class ModelChoiceOut(Out):
    model: str = Field(description="What a job would run on now.")
    preferred: str | None
    allowed: list[str]
    forced: bool


class AISettingsOut(Out):
    operations: dict[str, ModelChoiceOut]


# --- webhooks -----------------------------------------------------------------------------


class SecretOut(Out):
    secret: str = Field(pattern=r"^whsec_")


class RotatedSecretOut(SecretOut):
    # The replaced secret still signs until then, unless another rotation comes first.
    previous_valid_until: Timestamp


class EndpointOut(Out):
    url: str | None
    disabled_at: Timestamp | None


class AttemptOut(Out):
    attempted_at: Timestamp | None
    status_code: int | None
    latency_ms: int
    error: str | None


class DeliveryOut(Out):
    id: str = Field(description="The `webhook-id` header.")
    event_type: str
    job_id: str | None
    url: str
    status: str
    attempts: int
    next_attempt_at: Timestamp | None
    last_status_code: int | None
    created_at: Timestamp | None
    finished_at: Timestamp | None
    attempt_log: list[AttemptOut]


class RedeliveryOut(Out):
    id: str
    status: Literal["pending"]


# --- usage --------------------------------------------------------------------------------


class PeriodOut(Out):
    start: Timestamp
    end: Timestamp
    days_remaining: int


class UsageCreditsOut(CreditsOut):
    plan_allocation: int
    used_this_period: int


class NamedLimitOut(LimitOut):
    display_name: str


class NamedLimitsOut(Out):
    sites: NamedLimitOut
    users: NamedLimitOut
    keywords: NamedLimitOut
    ahrefs_queries: NamedLimitOut


class PlanNameOut(Out):
    slug: str
    name: str


class SummaryOut(Out):
    period: PeriodOut
    credits: UsageCreditsOut
    limits: NamedLimitsOut
    plan: PlanNameOut | None
    timezone: str


class RangeOut(Out):
    from_: Timestamp = Field(alias="from")
    to: Timestamp
    timezone: str
    days: int
    granularity: Literal["day", "week"]


class Spend(Out):
    credits: int
    jobs: int
    cost_usd: DecimalString


class TotalsOut(Spend):
    items: int
    images: int
    tokens_input: int
    tokens_output: int


class ByOperationOut(Spend):
    operation: str
    label: str
    items: int


class BySiteOut(Spend):
    site_id: str | None
    site_name: str | None
    items: int


class ByModelOut(Spend):
    model: str
    tier: str
    images: int
    tokens_input: int
    tokens_output: int


class ByTierOut(Spend):
    tier: str
    images: int


class BySourceOut(Spend):
    source: Literal["manual", "automation"]


class TimelinePointOut(Spend):
    date: str = Field(description="YYYY-MM-DD, the first day of its bucket.")


class InsightsOut(Out):
    range: RangeOut
    totals: TotalsOut
    by_operation: list[ByOperationOut]
    by_site: list[BySiteOut]
    by_model: list[ByModelOut]
    by_image_tier: list[ByTierOut]
    by_source: list[BySourceOut]
    timeline: list[TimelinePointOut]


class UsageLogOut(Out):
    id: int
    created_at: Timestamp
    operation: str
    detail: str
    model: str
    site_id: str | None
    job_id: str | None
    source: Literal["manual", "automation"]
    credits: int
    tokens_input: int
    tokens_output: int
    images: int
    items_created: int
    cost_usd: DecimalString


class DayOut(Out):
    date: str
    credits: int
    cost_usd: DecimalString
    usage_rows: int
    jobs: dict[str, int] = Field(description="Jobs created that day, by their status now.")


class DailyOut(Out):
    range: RangeOut
    totals: TotalsOut
    data: list[DayOut]


# --- artifacts ----------------------------------------------------------------------------


class Artifact(Out):
    id: int
    job_id: str
    site_id: str | None
    created_at: Timestamp


class ClusterOut(Artifact):
    name: str
    keywords: list[str]


class IdeaOut(Artifact):
    title: str
    description: str
    content_type: str
    cluster_name: str


class ContentOut(Artifact):
    title: str
    word_count: int
    body: str


class ImagePromptOut(Artifact):
    prompt: str


class ImageOut(Artifact):
    url: str
    prompt: str
    model: str


# --- service endpoints ----------------------------------------------------------------------


class HealthOut(Out):
    status: Literal["ok", "unavailable"]
    database: Literal["ok", "unavailable"]
    broker: Literal["ok", "unavailable"]
    redis: Literal["ok", "unavailable"] | None = None


class OpenApiOut(Out):
    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
    components: dict[str, Any]


# --- the decorator ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Responses:
    """What `@responds` declared: the success and the statuses it may fail with beyond
    those its other decorators imply (api/openapi.py adds those)."""

    model: type[BaseModel] | None
    status: int
    errors: tuple[int, ...] = ()
    media_types: dict[str, dict[str, Any]] = field(default_factory=dict)
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)


def responds(
    model: type[BaseModel] | None,
    status: int = 200,
    *,
    errors: Iterable[int] = (),
    media_types: dict[str, dict[str, Any]] | None = None,
    headers: dict[str, dict[str, Any]] | None = None,
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Declare the success (`model` with `status`; `None` for no body), the statuses the
    view itself may refuse with (`errors`: 402, 409 ...), other media types it can answer
    with (`{"text/csv": {"type": "string"}}`) and response headers. The view is unchanged."""
    declared = Responses(model, status, tuple(errors), media_types or {}, headers or {})

    def decorate(view: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> R:
            return view(*args, **kwargs)

        wrapper.__dict__["openapi_responses"] = declared
        return wrapper

    return decorate
