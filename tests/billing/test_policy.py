"""Model policy: the plan decides which models are allowed, AI settings choose among them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, update

from billing import policy
from billing.errors import InvalidInput, ModelNotAllowed
from billing.operations import OPERATIONS
from models import AIModelConfig, AISettings, Job, Plan
from models.db import transaction
from tests.factories import balances, catalog_restored, make_account, request, submit

TEXT_OPS = [name for name, op in OPERATIONS.items() if op.model_type == "text"]
ALL_OPS = list(OPERATIONS)


@pytest.fixture
def restore_catalog(db_url: str) -> Iterator[None]:
    with catalog_restored(db_url):
        yield


def prefer(session: Any, account_id: str, operation: str, model: str) -> None:
    session.add(AISettings(account_id=account_id, operation=operation, model_name=model))
    session.flush()


def resolved(session: Any, account: Any, operation: str, requested: str | None = None) -> str:
    return policy.resolve_model(session, account, OPERATIONS[operation], requested).name


@pytest.mark.parametrize("plan_slug", ["free-trial", "free"])
@pytest.mark.parametrize("operation", ALL_OPS)
def test_free_plans_force_the_cheap_models_whatever_the_settings(
    db_url: str, plan_slug: str, operation: str
) -> None:
    forced = "gpt-4o-mini" if OPERATIONS[operation].model_type == "text" else "hidream-full"
    expensive = "gpt-4o" if forced == "gpt-4o-mini" else "gpt-image-1"
    with transaction(db_url) as session:
        acct = make_account(session, plan_slug=plan_slug, status="trial")
        prefer(session, acct.id, operation, expensive)
        assert resolved(session, acct, operation) == forced


def test_free_trial_refuses_an_explicit_expensive_model_naming_the_allowed_ones(
    db_url: str,
) -> None:
    with transaction(db_url) as session:
        acct = make_account(session, plan_slug="free-trial", status="trial")
        with pytest.raises(ModelNotAllowed) as refused:
            resolved(session, acct, "content_generation", "gpt-4o")
        assert refused.value.code == "model_not_allowed"
        assert refused.value.details == {"model": "gpt-4o", "allowed": ["gpt-4o-mini"]}
        assert "gpt-4o-mini" in refused.value.message

        with pytest.raises(ModelNotAllowed) as images:
            resolved(session, acct, "image_generation", "dall-e-3")
        assert images.value.details["allowed"] == ["hidream-full"]
        # Asking for the forced model by name is fine.
        assert resolved(session, acct, "content_generation", "gpt-4o-mini") == "gpt-4o-mini"


def test_a_refused_model_submits_nothing(db_url: str) -> None:
    with transaction(db_url) as session:
        account_id = make_account(session, plan_slug="free-trial", status="trial").id
    with pytest.raises(ModelNotAllowed), transaction(db_url) as session:
        submit(session, account_id, request(model="gpt-4o"))
    with transaction(db_url) as session:
        assert balances(session, account_id) == (10_000, 0)
        assert session.scalar(select(func.count()).select_from(Job)) == 0


@pytest.mark.parametrize(("operation", "model"), [
    ("content_generation", "gpt-4.1"),
    ("clustering", "gpt-4o"),
    ("image_generation", "gpt-image-1"),
])  # fmt: skip
def test_starter_honours_the_ai_settings_preference(
    db_url: str, operation: str, model: str
) -> None:
    with transaction(db_url) as session:
        acct = make_account(session, plan_slug="starter")
        default = resolved(session, acct, operation)
        prefer(session, acct.id, operation, model)
        assert resolved(session, acct, operation) == model
        # The preference is per account and per operation.
        assert resolved(session, make_account(session, plan_slug="starter"), operation) == default
        siblings = [o for o in TEXT_OPS if o != operation]
        if OPERATIONS[operation].model_type == "text":
            assert {resolved(session, acct, o) for o in siblings} == {default}
        # An explicit model in the request wins over the preference.
        assert resolved(session, acct, operation, default) == default


def test_starter_defaults_to_the_default_models(db_url: str) -> None:
    with transaction(db_url) as session:
        acct = make_account(session, plan_slug="starter")
        assert resolved(session, acct, "clustering") == "gpt-4o-mini"
        assert resolved(session, acct, "image_generation") == "hidream-full"


def test_the_submitted_job_records_the_resolved_model(db_url: str) -> None:
    with transaction(db_url) as session:
        acct = make_account(session, plan_slug="starter")
        prefer(session, acct.id, "clustering", "gpt-4.1")
        account_id = acct.id
    with transaction(db_url) as session:
        assert submit(session, account_id, request()).model == "gpt-4.1"


@pytest.mark.parametrize(("operation", "model"), [
    ("content_generation", "gpt-9"),
    ("content_generation", "hidream-full"),  # known, but an image model
    ("image_generation", "gpt-4o"),  # known, but a text model
])  # fmt: skip
def test_unknown_or_wrong_type_model_is_invalid_input(
    db_url: str, operation: str, model: str
) -> None:
    with transaction(db_url) as session:
        acct = make_account(session, plan_slug="starter")
        with pytest.raises(InvalidInput) as refused:
            resolved(session, acct, operation, model)
        assert refused.value.code == "invalid_request"
        assert "model" in refused.value.details["fields"]


def test_unknown_model_on_a_free_plan_is_invalid_not_disallowed(db_url: str) -> None:
    with transaction(db_url) as session:
        acct = make_account(session, plan_slug="free-trial", status="trial")
        with pytest.raises(InvalidInput):
            resolved(session, acct, "clustering", "gpt-9")


def test_a_plan_allow_list_limits_the_choice(db_url: str, restore_catalog: None) -> None:
    with transaction(db_url) as session:
        plan = session.scalar(select(Plan).where(Plan.slug == "growth"))
        plan.allowed_text_models = ["gpt-4o-mini", "gpt-4.1"]
        session.flush()
        acct = make_account(session, plan_slug="growth")
        assert policy.allowed_model_names(session, plan, "text") == ["gpt-4.1", "gpt-4o-mini"]
        prefer(session, acct.id, "content_generation", "gpt-4o")  # not on the list: ignored
        assert resolved(session, acct, "content_generation") == "gpt-4o-mini"
        with pytest.raises(ModelNotAllowed) as refused:
            resolved(session, acct, "content_generation", "gpt-4o")
        assert refused.value.details["allowed"] == ["gpt-4.1", "gpt-4o-mini"]


def test_inactive_models_are_not_allowed(db_url: str, restore_catalog: None) -> None:
    with transaction(db_url) as session:
        session.execute(
            update(AIModelConfig).where(AIModelConfig.name == "gpt-4.1").values(is_active=False)
        )
        acct = make_account(session, plan_slug="starter")
        assert "gpt-4.1" not in policy.allowed_model_names(session, acct.plan, "text")
        prefer(session, acct.id, "clustering", "gpt-4.1")
        assert resolved(session, acct, "clustering") == "gpt-4o-mini"
        with pytest.raises(ModelNotAllowed):
            resolved(session, acct, "clustering", "gpt-4.1")


def test_forcing_the_defaults_beats_the_plans_allow_list(
    db_url: str, restore_catalog: None
) -> None:
    """force_default_models alone decides, even where the allow list says otherwise."""
    with transaction(db_url) as session:
        plan = session.scalar(select(Plan).where(Plan.slug == "free-trial"))
        plan.allowed_text_models = []  # empty would mean "every active model"
        plan.allowed_image_models = ["gpt-image-1", "hidream-full"]
        session.flush()
        acct = make_account(session, plan_slug="free-trial", status="trial")
        prefer(session, acct.id, "image_generation", "gpt-image-1")
        assert policy.allowed_model_names(session, plan, "text") == ["gpt-4o-mini"]
        assert resolved(session, acct, "image_generation") == "hidream-full"
        with pytest.raises(ModelNotAllowed):
            resolved(session, acct, "clustering", "gpt-4.1")
