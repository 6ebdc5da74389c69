"""SQLAlchemy 2.x models, one module per aggregate; import from here."""

from models.account import (
    ACCOUNT_STATUSES,
    PAYMENT_METHODS,
    USER_ROLES,
    Account,
    AISettings,
    ApiKey,
    Invitation,
    Keyword,
    Site,
    User,
)
from models.ai_model import AIModelConfig
from models.artifacts import Cluster, Content, Idea, Image, ImagePrompt
from models.automation import FINAL_RUN_STATUSES, RUN_STATUSES, AutomationRun
from models.base import Base, as_utc, new_id, utcnow
from models.catalog_version import CATALOG_VERSION, CatalogVersion
from models.job import FINAL_JOB_STATUSES, JOB_STATUSES, Job
from models.keyword_library import KEYWORD_INTENTS, LibraryKeyword
from models.ledger import (
    UNBILLED_REASONS,
    CreditReservation,
    CreditTransaction,
    CreditUsageLog,
    UnbilledUsage,
)
from models.lifecycle import AccountEvent, PeriodRun
from models.plan import Plan
from models.purchase import PURCHASE_KINDS, PURCHASE_STATUSES, Purchase
from models.webhook import DELIVERY_STATUSES, WebhookAttempt, WebhookDelivery

__all__ = [
    "ACCOUNT_STATUSES",
    "CATALOG_VERSION",
    "DELIVERY_STATUSES",
    "FINAL_JOB_STATUSES",
    "FINAL_RUN_STATUSES",
    "JOB_STATUSES",
    "KEYWORD_INTENTS",
    "PAYMENT_METHODS",
    "PURCHASE_KINDS",
    "PURCHASE_STATUSES",
    "RUN_STATUSES",
    "UNBILLED_REASONS",
    "USER_ROLES",
    "AIModelConfig",
    "AISettings",
    "Account",
    "AccountEvent",
    "ApiKey",
    "AutomationRun",
    "Base",
    "CatalogVersion",
    "Cluster",
    "Content",
    "CreditReservation",
    "CreditTransaction",
    "CreditUsageLog",
    "Idea",
    "Image",
    "ImagePrompt",
    "Invitation",
    "Job",
    "Keyword",
    "LibraryKeyword",
    "PeriodRun",
    "Plan",
    "Purchase",
    "Site",
    "UnbilledUsage",
    "User",
    "WebhookAttempt",
    "WebhookDelivery",
    "as_utc",
    "new_id",
    "utcnow",
]
