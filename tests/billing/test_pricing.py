"""The hold is an upper bound: checked against the real prompts the task handlers build
and the simulated provider's honest token counts, for small, large and unicode inputs.
And no input the API accepts has its answer cut off at `max_tokens` (a cut-off answer
still costs its tokens): the output bounds cover the sim's whole answer.

No database here: the price list is `billing.catalog.MODELS`, the one `seed` loads.
"""

from __future__ import annotations

import importlib
import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing import catalog
from billing.errors import InvalidInput
from billing.operations import OPERATIONS, validate_input
from billing.pricing import (
    PROMPT_OVERHEAD_TOKENS,
    Usage,
    actual_charge,
    input_token_bound,
    text_credits,
)
from models import AIModelConfig
from simulator.answers import (
    count_tokens,
    generate_content_for,
    prompt_tokens,
    truncate_tokens,
)


def max_output_tokens(operation: str, job_input: dict[str, Any]) -> int:
    return OPERATIONS[operation].max_output_tokens(job_input)


def estimate_hold(operation: str, model: AIModelConfig, job_input: dict[str, Any]) -> int:
    return OPERATIONS[operation].hold(model, job_input)


TEXT_OPERATIONS = [name for name, op in OPERATIONS.items() if op.model_type == "text"]
MODELS = {
    values["name"]: AIModelConfig(**{k: v for k, v in values.items() if k != "is_default"})
    for values in catalog.MODELS
}
TEXT_MODELS = [m for m in MODELS.values() if m.model_type == "text"]
IMAGE_MODELS = [m for m in MODELS.values() if m.model_type == "image"]

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def handler(operation: str) -> Any:
    return importlib.import_module(f"tasks.{operation}").HANDLER


def sim_prompt_tokens(messages: list[dict[str, str]]) -> int:
    """The simulated provider's prompt usage, as documented: per message +4, plus 2."""
    return sum(count_tokens(m["content"]) + 4 for m in messages) + 2


def sim_answer(operation: str, job_input: dict[str, Any]) -> tuple[int, int, int]:
    """(prompt tokens, answer tokens, reported completion tokens) for the sim's real answer.

    The sim cuts its answer at `max_tokens` and reports what it sent, as the real
    service does; the worker is charged for that.
    """
    messages = handler(operation).messages(job_input)
    tokens_in = sim_prompt_tokens(messages)
    assert tokens_in == prompt_tokens(messages)  # our formula is the sim's
    answer = generate_content_for(messages)
    sent, _ = truncate_tokens(answer, max_output_tokens(operation, job_input))
    return tokens_in, count_tokens(answer), count_tokens(sent)


def check_hold(operation: str, raw_input: dict[str, Any]) -> None:
    """The hold covers the prompt and the answer the sim reports, on every text model."""
    job_input = validate_input(OPERATIONS[operation], raw_input)
    tokens_in, _, tokens_out = sim_answer(operation, job_input)
    assert input_token_bound(job_input) >= tokens_in
    assert tokens_out <= max_output_tokens(operation, job_input)
    for model in TEXT_MODELS:
        cap = model.max_output_tokens
        if cap is not None and max_output_tokens(operation, job_input) > cap:
            # The provider would refuse such a max_tokens: refused before any hold.
            with pytest.raises(InvalidInput, match=f"at most {cap:,}"):
                estimate_hold(operation, model, job_input)
            continue
        hold = estimate_hold(operation, model, job_input)
        assert text_credits(model, tokens_in + tokens_out) <= hold, model.name
        charge = actual_charge(model, Usage(tokens_in, tokens_out), hold)
        assert not charge.estimate_miss
        assert 1 <= charge.credits <= hold


def check_answer_fits(operation: str, raw_input: dict[str, Any]) -> None:
    """The sim's whole answer fits in max_tokens, so the job is not cut off and failed."""
    job_input = validate_input(OPERATIONS[operation], raw_input)
    _, tokens_out, _ = sim_answer(operation, job_input)
    limit = max_output_tokens(operation, job_input)
    assert tokens_out <= limit, f"{operation}: answer of {tokens_out} tokens > max_tokens {limit}"


# --- strategies: what a customer may send (valid after normalisation) --------------------

# Any unicode at all (control characters, combining marks, emoji, RTL ...).
any_text = st.text(min_size=1, max_size=300).map(str.strip).filter(bool)
# Punctuation-dense "words": the most tokens per byte the sim's tokenizer can see.
dense_text = st.text(alphabet=".,:/?&=-+#'\"\\\u0301", min_size=1, max_size=300).filter(
    lambda s: bool(s.strip())
)
thai = st.sampled_from(["รองเท้าวิ่งที่ดีที่สุด", "รองเท้าวิ่งราคาถูก", "วิ่งมาราธอน"])
# Space-separated words of letters and digits, in any script: ordinary search keywords.
plain_word = st.text(
    alphabet=st.characters(categories=["Lu", "Ll", "Lo", "Nd"]), min_size=1, max_size=14
)
plain_text = st.lists(plain_word, min_size=1, max_size=8).map(" ".join)
plain_sentences = st.lists(plain_text.map(lambda s: s + "."), min_size=1, max_size=40).map(" ".join)


def inputs(keyword: st.SearchStrategy[str], text: st.SearchStrategy[str]) -> dict[str, Any]:
    keywords = st.lists(keyword, min_size=1, max_size=40)
    return {
        "clustering": st.fixed_dictionaries({"keywords": keywords}),
        "idea_generation": st.fixed_dictionaries(
            {
                "cluster": st.fixed_dictionaries({"name": keyword, "keywords": keywords}),
                "count": st.integers(1, 20),
            }
        ),
        "content_generation": st.fixed_dictionaries(
            {
                "title": keyword,
                "word_count": st.integers(100, 5000),
                "keywords": st.lists(keyword, max_size=12),
            }
        ),
        "image_prompt_extraction": st.fixed_dictionaries(
            {"text": text, "count": st.integers(1, 10)}
        ),
    }


ADVERSARIAL = inputs(
    st.one_of(plain_text, any_text, dense_text, thai),
    st.lists(st.one_of(plain_text, any_text, dense_text, st.just(".")), min_size=1, max_size=60)
    .map(" ".join)
    .filter(lambda s: bool(s.strip())),
)
ORDINARY = inputs(plain_text, plain_sentences)


@pytest.mark.parametrize("operation", TEXT_OPERATIONS)
def test_every_text_operation_has_strategies(operation: str) -> None:
    assert operation in ADVERSARIAL
    assert operation in ORDINARY


@pytest.mark.parametrize("operation", TEXT_OPERATIONS)
@SETTINGS
@given(data=st.data())
def test_hold_bounds_the_real_usage_for_any_input(operation: str, data: st.DataObject) -> None:
    job_input = data.draw(ADVERSARIAL[operation], label="input")
    check_hold(operation, job_input)
    check_answer_fits(operation, job_input)


@pytest.mark.parametrize("operation", TEXT_OPERATIONS)
@SETTINGS
@given(data=st.data())
def test_ordinary_answers_fit_in_max_tokens(operation: str, data: st.DataObject) -> None:
    job_input = data.draw(ORDINARY[operation], label="input")
    check_hold(operation, job_input)
    check_answer_fits(operation, job_input)


LARGE_INPUTS = [
    pytest.param(
        "clustering",
        {"keywords": [f"keyword number {i} for the big list" for i in range(1000)]},
        id="clustering-1000-ascii",
    ),
    pytest.param(
        "clustering",
        {"keywords": [f"{'ключевое слово ' * 18}{i}"[:300] for i in range(1000)]},
        id="clustering-1000-cyrillic-300-chars",
    ),
    pytest.param(
        "clustering",
        {"keywords": [f"最好的跑步鞋 {i} 🏃‍♀️ données café" for i in range(1000)]},
        id="clustering-1000-cjk-emoji",
    ),
    pytest.param(
        "idea_generation",
        {
            "cluster": {
                "name": "Trail running " * 20,
                "keywords": [f"trail {i} ünïcödé" for i in range(200)],
            },
            "count": 20,
        },
        id="ideas-200-keywords-20-ideas",
    ),
    pytest.param(
        "content_generation",
        {
            "title": "The complete guide to trail running",
            "word_count": 5000,
            "keywords": [f"trail running tip {i}" for i in range(50)],
        },
        id="content-5000-words",
    ),
    pytest.param(
        "content_generation",
        {
            "title": "Guía completa",
            "word_count": 100,
            "keywords": ["zapatillas de montaña", "running en español"],
        },
        id="content-100-words",
    ),
    pytest.param(
        "image_prompt_extraction",
        {"text": "A long day on the mountain. " * 1700, "count": 10},
        id="prompts-50k-chars",
    ),
]


@pytest.mark.parametrize(("operation", "job_input"), LARGE_INPUTS)
def test_hold_bounds_the_real_usage_for_large_inputs(
    operation: str, job_input: dict[str, Any]
) -> None:
    check_hold(operation, job_input)
    check_answer_fits(operation, job_input)


def test_answers_for_token_dense_inputs_fit_in_max_tokens() -> None:
    thai = "รองเท้าวิ่งที่ดีที่สุดสำหรับนักวิ่งมาราธอนมือใหม่"  # one "word", 26 tokens
    urls = " ".join(f"https://example.com/guides/page-{i}?ref=blog" for i in range(8))
    cases = [
        # ~9,300 tokens of answer against max_tokens 8,300
        ("content_generation", {"title": "Running guide", "word_count": 5000, "keywords": [thai]}),
        # ~1,500 tokens of answer against max_tokens 1,100
        ("image_prompt_extraction", {"text": f"Sources for this guide: {urls}.", "count": 10}),
    ]
    for operation, job_input in cases:
        check_hold(operation, job_input)  # the ledger stays safe: the hold covers the answer
    for operation, job_input in cases:
        check_answer_fits(operation, job_input)


@pytest.mark.parametrize("operation", TEXT_OPERATIONS)
def test_prompt_overhead_covers_every_fixed_prompt(operation: str) -> None:
    """Everything but the input JSON itself fits in PROMPT_OVERHEAD_TOKENS."""
    messages = handler(operation).messages({})
    fixed = sim_prompt_tokens(messages) - count_tokens("{}")
    assert fixed <= PROMPT_OVERHEAD_TOKENS
    assert fixed > 20  # the system prompt really is in there


# --- images and the charge itself --------------------------------------------------------


@pytest.mark.parametrize("model", IMAGE_MODELS, ids=lambda m: m.name)
@pytest.mark.parametrize("count", [1, 4, 10])
def test_image_hold_is_count_times_credits_per_image(model: AIModelConfig, count: int) -> None:
    job_input = validate_input(OPERATIONS["image_generation"], {"prompt": "a fox", "count": count})
    hold = estimate_hold("image_generation", model, job_input)
    assert hold == count * model.credits_per_image
    charge = actual_charge(model, Usage(images=count), hold)
    assert (charge.credits, charge.estimate_miss) == (hold, False)
    assert charge.cost_usd == (model.cost_per_image * count).quantize(Decimal("0.000001"))
    fewer = actual_charge(model, Usage(images=1), hold)
    assert fewer.credits == model.credits_per_image


def test_image_credits_follow_the_quality_tiers() -> None:
    assert {m.name: m.credits_per_image for m in IMAGE_MODELS} == {
        "hidream-full": 1, "dall-e-3": 5, "gpt-image-1": 15,
    }  # fmt: skip


@pytest.mark.parametrize("model", TEXT_MODELS, ids=lambda m: m.name)
def test_text_charge_is_tokens_over_tokens_per_credit_rounded_up(model: AIModelConfig) -> None:
    tpc = model.tokens_per_credit
    assert actual_charge(model, Usage(tpc, 0), 1000).credits == 1
    assert actual_charge(model, Usage(tpc, 1), 1000).credits == 2
    assert actual_charge(model, Usage(0, 0), 1000).credits == 1  # never free
    charge = actual_charge(model, Usage(1000, 2000), 1000)
    assert charge.credits == math.ceil(3000 / tpc)
    expected = (model.cost_per_1k_input * 1000 + model.cost_per_1k_output * 2000) / 1000
    assert charge.cost_usd == expected.quantize(Decimal("0.000001"))


def test_a_charge_above_the_hold_is_capped_and_flagged() -> None:
    model = MODELS["gpt-4o"]
    charge = actual_charge(model, Usage(10_000, 10_000), 50)
    assert (charge.credits, charge.estimate_miss) == (50, True)
    exact = actual_charge(model, Usage(50 * model.tokens_per_credit, 0), 50)
    assert (exact.credits, exact.estimate_miss) == (50, False)


def test_max_output_tokens_refuses_image_operations() -> None:
    with pytest.raises(ValueError, match="not a text operation"):
        max_output_tokens("image_generation", {"prompt": "x"})
