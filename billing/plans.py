"""Plans as data: the public list, and admin create/update with validation."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.amounts import CreditPrice, Price
from billing.errors import AlreadyExists, InvalidInput, NotFound
from billing.operations import validation_details
from billing.text import Name
from models import AIModelConfig, Plan

Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,49}$")]
Limit = Annotated[int, Field(ge=0, le=2**31 - 1)]


class PlanFields(BaseModel):
    """Everything an admin may set on a plan; on update, only the fields sent change."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: Name
    price: Price
    billing_cycle: Literal["monthly", "yearly"] = "monthly"
    included_credits: Limit = 0
    max_sites: Limit | None = 1
    max_users: Limit | None = 1
    max_keywords: Limit | None = 100
    max_ahrefs_queries: Limit = 0
    allow_credit_topup: bool = False
    # USD per top-up credit (a purchase's price); None: top-ups cannot be priced.
    extra_credit_price: CreditPrice | None = None
    is_internal: bool = False
    is_active: bool = True
    features: list[str] = Field(default_factory=list)
    force_default_models: bool = False
    allowed_text_models: list[str] = Field(
        default_factory=list, json_schema_extra={"items": {"x-choices": "text_models"}}
    )
    allowed_image_models: list[str] = Field(
        default_factory=list, json_schema_extra={"items": {"x-choices": "image_models"}}
    )
    requests_per_minute: int = Field(default=120, ge=1, le=100_000)
    max_concurrent_jobs: int = Field(default=2, ge=1, le=10_000)


class NewPlan(PlanFields):
    slug: Slug


def _parse(model: type[PlanFields], raw: object) -> PlanFields:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        fields = validation_details(exc)
        name, problem = next(iter(fields.items()))
        raise InvalidInput(f"Invalid plan: {name}: {problem}.", fields=fields) from None


def _check_models(session: Session, values: dict[str, Any]) -> None:
    for field, model_type in (("allowed_text_models", "text"), ("allowed_image_models", "image")):
        for name in values.get(field) or []:
            model = session.get(AIModelConfig, name)
            if model is None or model.model_type != model_type:
                raise InvalidInput(
                    f"{field}: {name!r} is not a {model_type} model.", fields={field: name}
                )


def is_renewable(plan: Plan) -> bool:
    """Plans whose periods are paid for, and renewed: priced, or internal (enterprise).
    (`lifecycle.renew_credits` selects the same plans in SQL.)"""
    return plan.price > 0 or plan.is_internal


def list_public(session: Session) -> list[Plan]:
    query = select(Plan).where(Plan.is_active, Plan.is_internal.is_(False)).order_by(Plan.price)
    return list(session.scalars(query))


def list_all(session: Session) -> list[Plan]:
    return list(session.scalars(select(Plan).order_by(Plan.price, Plan.slug)))


def get_plan(session: Session, slug: str) -> Plan:
    plan = session.scalar(select(Plan).where(Plan.slug == slug))
    if plan is None:
        raise NotFound(f"Plan {slug!r} not found.")
    return plan


def create_plan(session: Session, raw: object) -> Plan:
    values = _parse(NewPlan, raw).model_dump()
    _check_models(session, values)
    if session.scalar(select(Plan.id).where(Plan.slug == values["slug"])):
        raise AlreadyExists(f"A plan with slug {values['slug']!r} exists.", field="slug")
    plan = Plan(**values)
    session.add(plan)
    session.flush()
    return plan


def update_plan(session: Session, slug: str, raw: object) -> Plan:
    """Validate the plan as it would be after the patch, then apply the patch; the fields
    it sets are the admin's from now on (`catalog.seed` no longer writes them)."""
    plan = get_plan(session, slug)
    if not isinstance(raw, dict):
        raise InvalidInput("The plan patch must be a JSON object.")
    current = {name: getattr(plan, name) for name in PlanFields.model_fields}
    values = _parse(PlanFields, {**current, **raw}).model_dump()
    _check_models(session, values)
    for name in raw:
        setattr(plan, name, values[name])
    # Kept through `ops seed`, which every start and deploy runs.
    plan.admin_fields = sorted({*plan.admin_fields, *raw})
    session.flush()
    return plan
