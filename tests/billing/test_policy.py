"""Model policy: the plan decides which models are allowed, AI settings choose among them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from billing import policy
from billing.errors import InvalidInput, ModelNotAllowed
from billing.operations import OPERATIONS
from models import CATALOG_VERSION, Account, AIModelConfig, AISettings, Job, Plan
from models.db import session_factory, transaction
from tests.factories import (
    balances,
    catalog_restored,
    make_account,
    request,
    statements_of,
    submit,
)

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


def test_may_run_allows_what_an_explicit_request_would_be_allowed_now(
    db_url: str, restore_catalog: None
) -> None:
    """The worker's question before the provider call: the plan's policy, among the
    active models of the operation's type."""
    clustering = OPERATIONS["clustering"]
    with transaction(db_url) as session:
        starter, free = (
            session.scalar(select(Plan).where(Plan.slug == slug)) for slug in ("starter", "free")
        )
        assert policy.may_run(session, starter, clustering, "gpt-4o")
        assert policy.may_run(session, None, clustering, "gpt-4o")  # no plan: no policy
        assert not policy.may_run(session, free, clustering, "gpt-4o")
        assert policy.may_run(session, free, clustering, "gpt-4o-mini")
        assert not policy.may_run(session, starter, clustering, "hidream-full")  # an image model
        assert not policy.may_run(session, starter, clustering, "gpt-9")
        session.execute(
            update(AIModelConfig).where(AIModelConfig.name == "gpt-4.1").values(is_active=False)
        )
        assert not policy.may_run(session, starter, clustering, "gpt-4.1")

        version = stamp(session)
        with statements_of(db_url) as statements:
            assert policy.may_run(session, starter, clustering, "gpt-4o", version)
        assert statements == []  # the price list read at this stamp above


# --- the price list: cached per process, keyed by the catalog's stamp ----------------------


def stamp(session: Any) -> int:
    return int(session.scalar(select(CATALOG_VERSION)))


def test_a_cached_price_list_costs_no_statement_while_the_stamp_holds(db_url: str) -> None:
    with transaction(db_url) as session:
        acct = make_account(session)
        seen = policy.Seen(stamp(session), has_preferences=False)
        policy.resolve_model(session, acct, OPERATIONS["clustering"], None, seen)  # warm
        with statements_of(db_url) as statements:
            model = policy.resolve_model(session, acct, OPERATIONS["clustering"], None, seen)
            image = policy.resolve_model(session, acct, OPERATIONS["image_generation"], None, seen)

    assert statements == []
    assert (model.name, image.name) == ("gpt-4o-mini", "hidream-full")
    assert model not in session  # shared, detached rows: no session owns them


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE ai_model_configs SET tokens_per_credit = 50 WHERE name = 'gpt-4o-mini'",
        "UPDATE plans SET allowed_text_models = '[\"gpt-4o\"]' WHERE slug = 'starter'",
        "INSERT INTO ai_model_configs (name, model_type, provider_model, cost_per_1k_input, "
        "cost_per_1k_output, cost_per_image, tokens_per_credit, credits_per_image, quality_tier, "
        "is_default, is_active, created_at) VALUES ('new-model', 'text', 'new-model', 0, 0, 0, "
        "10, 1, 'basic', false, true, CURRENT_TIMESTAMP)",
        "DELETE FROM ai_model_configs WHERE name = 'gpt-4.1'",
    ],
)
def test_any_write_to_plans_or_model_prices_changes_the_stamp(
    db_url: str, restore_catalog: None, change: str
) -> None:
    """The database stamps the catalog itself (triggers), whoever writes: the admin API,
    `ops seed`, or an operator's SQL."""
    with transaction(db_url) as session:
        before = stamp(session)
        make_account(session)  # other tables leave it alone
        assert stamp(session) == before
    with transaction(db_url) as session:
        session.execute(text(change))
    with transaction(db_url) as session:
        assert stamp(session) != before


def test_a_price_change_counts_at_once_even_with_a_warm_cache(
    db_url: str, restore_catalog: None
) -> None:
    with transaction(db_url) as session:
        acct = make_account(session)
        before = policy.resolve_model(session, acct, OPERATIONS["clustering"], None)
    with transaction(db_url) as session:
        session.execute(update(AIModelConfig).where(AIModelConfig.name == "gpt-4o-mini")
                        .values(tokens_per_credit=7))  # fmt: skip
    with transaction(db_url) as session:
        loaded = session.get(Account, acct.id)
        after = policy.resolve_model(session, loaded, OPERATIONS["clustering"], None)

    assert (before.tokens_per_credit, after.tokens_per_credit) == (100, 7)


def test_a_rolled_back_price_change_is_never_served_from_the_cache(
    db_url: str, restore_catalog: None
) -> None:
    """Read inside the writing transaction, the change is cached under a stamp that the
    rollback discards; stamps are random, so none later matches it."""
    with transaction(db_url) as session:
        acct = make_account(session)
        account_id = acct.id
    session = session_factory(db_url)()
    try:
        session.execute(update(AIModelConfig).where(AIModelConfig.name == "gpt-4o-mini")
                        .values(tokens_per_credit=3))  # fmt: skip
        loaded = session.get(Account, account_id)
        inside = policy.resolve_model(session, loaded, OPERATIONS["clustering"], None)
        assert inside.tokens_per_credit == 3
    finally:
        session.rollback()
        session.close()
    with transaction(db_url) as session:
        loaded = session.get(Account, account_id)
        seen = policy.Seen(stamp(session))
        model = policy.resolve_model(session, loaded, OPERATIONS["clustering"], None, seen)

    assert model.tokens_per_credit == 100


def test_two_first_choices_of_a_model_at_once_both_succeed(db_url: str) -> None:
    """Two admins saving the account's first preference for an operation at the same
    moment: the second insert met the first's row in the unique index and failed with
    an IntegrityError (a 500) on PostgreSQL; the later choice now simply wins."""
    with transaction(db_url) as session:
        account_id = make_account(session, plan_slug="starter").id
    operation = OPERATIONS["content_generation"]
    first_saved = threading.Event()
    errors: list[BaseException] = []

    def choose(model: str, hold_open: bool) -> None:
        try:
            with transaction(db_url) as session:
                account = session.get(Account, account_id)
                assert account is not None
                if not hold_open:
                    first_saved.wait(timeout=5)
                policy.set_preference(session, account, operation, model)
                if hold_open:
                    first_saved.set()
                    threading.Event().wait(0.5)  # the other now inserts too, and waits
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=choose, args=("gpt-4o", True)),
        threading.Thread(target=choose, args=("gpt-4.1", False)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    with transaction(db_url) as session:
        chosen = session.scalars(
            select(AISettings.model_name).where(AISettings.account_id == account_id)
        ).all()
    assert chosen == ["gpt-4.1"]
