"""SQLAlchemy 2.x models, one module per aggregate; import from here."""

from models.account import (
    ACCOUNT_STATUSES,
    USER_ROLES,
    Account,
    AISettings,
    ApiKey,
    Keyword,
    Site,
    User,
)
from models.ai_model import AIModelConfig
from models.artifacts import Cluster, Content, Idea, Image, ImagePrompt
from models.base import Base, as_utc, new_id, utcnow
from models.job import FINAL_JOB_STATUSES, JOB_STATUSES, Job
from models.ledger import (
    UNBILLED_REASONS,
    CreditReservation,
    CreditTransaction,
    CreditUsageLog,
    UnbilledUsage,
)
from models.lifecycle import AccountEvent, PeriodRun
from models.plan import Plan
from models.webhook import DELIVERY_STATUSES, WebhookAttempt, WebhookDelivery

__all__ = [
    "ACCOUNT_STATUSES",
    "DELIVERY_STATUSES",
    "FINAL_JOB_STATUSES",
    "JOB_STATUSES",
    "UNBILLED_REASONS",
    "USER_ROLES",
    "AIModelConfig",
    "AISettings",
    "Account",
    "AccountEvent",
    "ApiKey",
    "Base",
    "Cluster",
    "Content",
    "CreditReservation",
    "CreditTransaction",
    "CreditUsageLog",
    "Idea",
    "Image",
    "ImagePrompt",
    "Job",
    "Keyword",
    "PeriodRun",
    "Plan",
    "Site",
    "UnbilledUsage",
    "User",
    "WebhookAttempt",
    "WebhookDelivery",
    "as_utc",
    "new_id",
    "utcnow",
]
