"""The plans and the model price list the product ships with, and the seed step.

Values: `credits-limits-summary.md` "Suggested Plan Values", plus `free-trial` with
2,000 credits (tenancy plan); enterprise from the current database state, internal.
Image credits follow the seeds' usage table: basic 1, quality 5, premium 15.
`extra_credit_price` (USD per top-up credit): the seeds name the field without values;
each paid plan's is its own price per included credit rounded up to the next half cent
per thousand credits, so buying on top never undercuts the plan.
`max_concurrent_jobs` (jobs of one account in flight at once) is ours: 2 on the free
plans, then 5, 10, 25 and 100.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from models import AIModelConfig, Plan

CHEAP_TEXT = ["gpt-4o-mini"]
CHEAP_IMAGE = ["hidream-full"]

PLANS: list[dict[str, Any]] = [
    {
        "slug": "free",
        "name": "Free",
        "price": Decimal("0"),
        "included_credits": 2000,
        "max_sites": 1,
        "max_users": 1,
        "max_keywords": 100,
        "max_ahrefs_queries": 0,
        "allow_credit_topup": False,
        "features": [],
        "force_default_models": True,
        "allowed_text_models": CHEAP_TEXT,
        "allowed_image_models": CHEAP_IMAGE,
        "requests_per_minute": 60,
        "max_concurrent_jobs": 2,
    },
    {
        "slug": "free-trial",
        "name": "Free Trial",
        "price": Decimal("0"),
        "included_credits": 2000,
        "max_sites": 1,
        "max_users": 1,
        "max_keywords": 100,
        "max_ahrefs_queries": 0,
        "allow_credit_topup": False,
        "features": ["ai_writer"],
        "force_default_models": True,
        "allowed_text_models": CHEAP_TEXT,
        "allowed_image_models": CHEAP_IMAGE,
        "requests_per_minute": 60,
        "max_concurrent_jobs": 2,
    },
    {
        "slug": "starter",
        "name": "Starter",
        "price": Decimal("49"),
        "included_credits": 10000,
        "max_sites": 2,
        "max_users": 2,
        "max_keywords": 1000,
        "max_ahrefs_queries": 50,
        "allow_credit_topup": True,
        "extra_credit_price": Decimal("0.005"),
        "features": ["ai_writer", "image_gen"],
        "requests_per_minute": 120,
        "max_concurrent_jobs": 5,
    },
    {
        "slug": "growth",
        "name": "Growth",
        "price": Decimal("149"),
        "included_credits": 40000,
        "max_sites": 5,
        "max_users": 3,
        "max_keywords": 5000,
        "max_ahrefs_queries": 200,
        "allow_credit_topup": True,
        "extra_credit_price": Decimal("0.004"),
        "features": ["ai_writer", "image_gen", "auto_publish"],
        "requests_per_minute": 300,
        "max_concurrent_jobs": 10,
    },
    {
        "slug": "scale",
        "name": "Scale",
        "price": Decimal("399"),
        "included_credits": 120000,
        "max_sites": None,
        "max_users": 5,
        "max_keywords": 20000,
        "max_ahrefs_queries": 500,
        "allow_credit_topup": True,
        "extra_credit_price": Decimal("0.0035"),
        "features": ["ai_writer", "image_gen", "auto_publish", "custom_prompts"],
        "requests_per_minute": 600,
        "max_concurrent_jobs": 25,
    },
    {
        "slug": "enterprise",
        "name": "Enterprise",
        "price": Decimal("0"),
        "included_credits": 200000,
        "max_sites": 20,
        "max_users": 10000,
        "max_keywords": None,
        "max_ahrefs_queries": 2000,
        "allow_credit_topup": True,
        "extra_credit_price": Decimal("0.003"),
        "is_internal": True,
        "features": ["ai_writer", "image_gen", "auto_publish", "custom_prompts", "unlimited"],
        "requests_per_minute": 1200,
        "max_concurrent_jobs": 100,
    },
]

MODELS: list[dict[str, Any]] = [
    {
        "name": "gpt-4o-mini",
        "model_type": "text",
        "provider_model": "gpt-4o-mini",
        "max_output_tokens": 16384,
        "cost_per_1k_input": Decimal("0.00015"),
        "cost_per_1k_output": Decimal("0.0006"),
        "tokens_per_credit": 100,
        "quality_tier": "basic",
        "is_default": True,
    },
    {
        "name": "gpt-4o",
        "model_type": "text",
        "provider_model": "gpt-4o",
        "max_output_tokens": 16384,
        "cost_per_1k_input": Decimal("0.0025"),
        "cost_per_1k_output": Decimal("0.01"),
        "tokens_per_credit": 25,
        "quality_tier": "premium",
    },
    {
        "name": "gpt-4.1",
        "model_type": "text",
        "provider_model": "gpt-4.1",
        "max_output_tokens": 32768,
        "cost_per_1k_input": Decimal("0.002"),
        "cost_per_1k_output": Decimal("0.008"),
        "tokens_per_credit": 30,
        "quality_tier": "premium",
    },
    {
        "name": "hidream-full",
        "model_type": "image",
        "provider_model": "hidream-full",
        "cost_per_image": Decimal("0.01"),
        "credits_per_image": 1,
        "quality_tier": "basic",
        "is_default": True,
    },
    {
        "name": "dall-e-3",
        "model_type": "image",
        "provider_model": "dall-e-3",
        "cost_per_image": Decimal("0.04"),
        "credits_per_image": 5,
        "quality_tier": "quality",
    },
    {
        "name": "gpt-image-1",
        "model_type": "image",
        "provider_model": "gpt-image-1",
        "cost_per_image": Decimal("0.17"),
        "credits_per_image": 15,
        "quality_tier": "premium",
    },
]


def seed(session: Session, *, reset: bool = False) -> None:
    """Insert or update the shipped plans and models; safe to run on every start.

    A plan's fields an admin set (`Plan.admin_fields`) are left as they are, else every
    start or deploy would undo them (bring back a retired plan, its old price); `reset`
    writes the shipped values over them too."""
    for values in MODELS:
        _upsert(
            session,
            AIModelConfig,
            AIModelConfig.name,
            values["name"],
            {
                "is_default": False,
                "is_active": True,
                **values,
            },
        )
    # Defaults last, once the old defaults are cleared, so the partial unique index holds.
    session.execute(update(AIModelConfig).values(is_default=False))
    for values in MODELS:
        if values.get("is_default"):
            session.execute(
                update(AIModelConfig)
                .where(AIModelConfig.name == values["name"])
                .values(is_default=True)
            )
    for values in PLANS:
        defaults = {
            "is_active": True,
            "is_internal": False,
            "force_default_models": False,
            "allowed_text_models": [],
            "allowed_image_models": [],
            "extra_credit_price": None,
        }
        _upsert(session, Plan, Plan.slug, values["slug"], {**defaults, **values}, reset=reset)


def _upsert(
    session: Session,
    model: Any,
    key_column: Any,
    key: str,
    values: dict[str, Any],
    *,
    reset: bool = False,
) -> None:
    existing = session.scalar(select(model).where(key_column == key))
    row_values = (
        {k: v for k, v in values.items() if k != "is_default"} if model is AIModelConfig else values
    )
    if existing is None:
        session.add(model(**row_values))
        session.flush()
        return
    kept: set[str] = set()
    if model is Plan:
        kept = set() if reset else set(existing.admin_fields)
        existing.admin_fields = sorted(kept)
    for name, value in row_values.items():
        if name not in kept:
            setattr(existing, name, value)
