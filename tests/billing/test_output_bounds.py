"""Every operation at every input maximum: the simulated provider's whole answer fits in
the `max_tokens` the operation asks for (nothing an honest user sends is cut off), and
the hold covers prompt and answer. Each maximum in the shapes that cost the most tokens:
plain words, punctuation, quotes and backslashes (JSON doubles them), control characters,
Thai (long words), and distinct one-letter keywords (a cluster each)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.billing.test_pricing import check_answer_fits, check_hold

SHAPES = {
    "words": "word",
    "punctuation": "!",
    "quotes": '"',
    "backslashes": "\\",
    "control": "a\tb\x01",
    "thai": "ภาษาไทย",
}


def text(shape: str, length: int = 300, tag: str = "") -> str:
    unit = SHAPES[shape] + (" " if shape == "words" else "")
    body = (unit * length)[: length - len(tag)]
    return (tag + body).strip() or "x"


def one_letter_keywords(n: int) -> list[str]:
    letters: list[str] = []
    for code in range(0xC0, 0x800):
        letter = chr(code).lower()
        if len(letter) == 1 and re.fullmatch(r"\w", letter) and letter not in letters:
            letters.append(letter)
    return letters[:n]


def maxima() -> list[Any]:
    cases = []
    for shape in SHAPES:
        cases += [
            pytest.param(
                "clustering",
                {"keywords": [text(shape, 300, f"{i} ") for i in range(1000)]},
                id=f"clustering-1000x300-{shape}",
            ),
            pytest.param(
                "idea_generation",
                {
                    "cluster": {
                        "name": text(shape),
                        "keywords": [text(shape, 300, f"{i} ") for i in range(200)],
                    },
                    "count": 20,
                },
                id=f"ideas-200x300-20-{shape}",
            ),
            pytest.param(
                "content_generation",
                {
                    "title": text(shape),
                    "word_count": 5000,
                    "keywords": [text(shape, 300, f"{i} ") for i in range(50)],
                },
                id=f"content-5000-50x300-{shape}",
            ),
            pytest.param(
                "content_generation",
                {"title": text(shape), "word_count": 100},
                id=f"content-100-title-{shape}",
            ),
            pytest.param(
                "image_prompt_extraction",
                {"text": (text(shape, 300) + ". ") * 165, "count": 10},
                id=f"prompts-50k-10-{shape}",
            ),
        ]
    cases.append(
        pytest.param(
            "clustering",
            {"keywords": one_letter_keywords(1000)},
            id="clustering-one-letter-clusters",
        )
    )
    return cases


@pytest.mark.parametrize(("operation", "job_input"), maxima())
def test_the_largest_inputs_are_not_cut_off(operation: str, job_input: dict[str, Any]) -> None:
    check_hold(operation, job_input)
    check_answer_fits(operation, job_input)
