"""The five AI operations: their input schema, queue and model type.

The API validates with these models and the workers read the normalised input back,
so a job's input means the same thing on both sides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy.orm import Session

from billing import pricing
from billing.errors import InvalidInput
from billing.keywords import expand_keyword_ids
from billing.text import LongText, Prompt, ShortText
from models import AIModelConfig

KeywordId = Annotated[int, Field(ge=1, le=2**31 - 1)]
ModelType = Literal["text", "image"]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ClusteringInput(_Input):
    """Keywords as text, or ids of the site's saved keywords, or both (at most 1000)."""

    model_config = ConfigDict(
        json_schema_extra={
            "minProperties": 1,
            "examples": [{"keywords": ["running shoes", "trail running", "marathon training"]}],
        }
    )

    keyword_ids: list[KeywordId] = Field(
        default_factory=list, max_length=1000, json_schema_extra={"minItems": 1}
    )
    keywords: list[ShortText] = Field(
        default_factory=list,
        max_length=1000,
        validate_default=True,
        json_schema_extra={"minItems": 1},
    )

    @model_validator(mode="before")
    @classmethod
    def _no_empty_list(cls, raw: Any) -> Any:
        """A list that is sent is not empty (leave it out instead)."""
        if isinstance(raw, dict):
            for name in ("keywords", "keyword_ids"):
                if raw.get(name) == []:
                    raise ValueError(f"'{name}' is empty: leave it out, or send at least one")
        return raw

    @field_validator("keywords")
    @classmethod
    def _at_least_one(cls, keywords: list[str], info: ValidationInfo) -> list[str]:
        if not keywords and not info.data.get("keyword_ids"):
            raise ValueError("Clustering needs at least one keyword ('keywords' or 'keyword_ids')")
        return keywords


class ClusterRef(_Input):
    name: ShortText
    keywords: list[ShortText] = Field(default_factory=list, max_length=200)


class IdeaGenerationInput(_Input):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"cluster": {"name": "trail running", "keywords": ["trail shoes"]}, "count": 3}
            ]
        }
    )

    cluster: ClusterRef
    count: int = Field(default=3, ge=1, le=20)


class ContentGenerationInput(_Input):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"title": "How to choose trail shoes", "word_count": 800}]}
    )

    title: ShortText
    word_count: int = Field(default=800, ge=100, le=5000)
    keywords: list[ShortText] = Field(default_factory=list, max_length=50)


class ImagePromptExtractionInput(_Input):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"text": "Trail shoes grip wet rock ...", "count": 3}]}
    )

    text: LongText
    count: int = Field(default=3, ge=1, le=10)


class ImageGenerationInput(_Input):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"prompt": "a runner on a misty trail", "count": 1}]}
    )

    prompt: Prompt
    count: int = Field(default=1, ge=1, le=10)


# Resolves references in a validated input (keyword ids) against the account's data.
Expander = Callable[[Session, str, "str | None", dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Operation:
    """One AI operation and everything that differs between operations."""

    name: str
    queue: str
    model_type: ModelType
    input_model: type[_Input]
    artifact_label: str
    # Text operations: the `max_tokens` the provider is told, which bounds the hold.
    output_tokens: Callable[[dict[str, Any]], int] | None = None
    expand: Expander | None = None
    # The input field a usage log shows as the job's short detail (first item of a list).
    detail_field: str = ""

    def max_output_tokens(self, job_input: dict[str, Any]) -> int:
        if self.output_tokens is None:
            raise ValueError(f"{self.name} is not a text operation")
        return self.output_tokens(job_input)

    def hold(
        self, model: AIModelConfig, job_input: dict[str, Any], *, worst_case: bool = False
    ) -> int:
        """The credits a submission holds: the most this job can cost on `model`.

        An answer never runs past the model's output cap: a job whose answer could need
        more is refused here (the provider would refuse its `max_tokens` after the hold
        was taken), and for an automation stage's `worst_case` input, whose jobs over the
        cap are never made, the bound is the cap."""
        bound = self.max_output_tokens(job_input) if self.output_tokens else 0
        cap = model.max_output_tokens
        if cap is not None and bound > cap:
            if not worst_case:
                raise InvalidInput(
                    f"This {self.name} input may need up to {bound:,} output tokens, and "
                    f"{model.name} writes at most {cap:,} in one answer: split it into "
                    "smaller jobs (fewer or shorter items).",
                    fields={"input": f"an answer of at most {cap:,} tokens on {model.name}"},
                    output_tokens=bound,
                    max_output_tokens=cap,
                )
            bound = cap
        return pricing.estimate_hold(model, job_input, bound)

    def detail(self, job_input: dict[str, Any], width: int = 100) -> str:
        """A one-line description of a job: its title, first keyword or prompt."""
        value = job_input.get(self.detail_field) if self.detail_field else None
        if isinstance(value, dict):
            value = value.get("name")
        if isinstance(value, list):
            more = f" (+{len(value) - 1} more)" if len(value) > 1 else ""
            value = f"{value[0]}{more}" if value else None
        text = " ".join(str(value).split()) if value is not None else ""
        return text if len(text) <= width else text[: width - 1] + "…"

    def expand_input(
        self, session: Session, account_id: str, site_id: str | None, job_input: dict[str, Any]
    ) -> dict[str, Any]:
        if self.expand is None:
            return job_input
        return self.expand(session, account_id, site_id, job_input)


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation(
            "clustering", "text", "text", ClusteringInput, "clusters",
            pricing.clustering_output_tokens, expand_keyword_ids, detail_field="keywords",
        ),
        Operation(
            "idea_generation", "text", "text", IdeaGenerationInput, "ideas",
            pricing.idea_output_tokens, detail_field="cluster",
        ),
        Operation(
            "content_generation", "text", "text", ContentGenerationInput, "articles",
            pricing.content_output_tokens, detail_field="title",
        ),
        Operation(
            "image_prompt_extraction", "text", "text", ImagePromptExtractionInput, "prompts",
            pricing.image_prompt_output_tokens, detail_field="text",
        ),
        Operation(
            "image_generation", "image", "image", ImageGenerationInput, "images",
            detail_field="prompt",
        ),
    )
}  # fmt: skip


def get_operation(name: object) -> Operation:
    if not isinstance(name, str) or name not in OPERATIONS:
        raise InvalidInput(
            f"Unknown operation {name!r}. Choose one of: {', '.join(OPERATIONS)}.",
            fields={"operation": f"one of {', '.join(OPERATIONS)}"},
        )
    return OPERATIONS[name]


def validation_details(exc: ValidationError, prefix: str = "") -> dict[str, str]:
    """Pydantic errors as {"input.keywords.0": "String should have at most 300 characters"}."""
    details: dict[str, str] = {}
    for error in exc.errors(include_url=False):
        path = ".".join(str(part) for part in (prefix, *error["loc"]) if part != "")
        # A validator's own ValueError reads as written, without pydantic's "Value error, ".
        message = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
        details[path or prefix or "body"] = message
    return details


def validate_input(operation: Operation, raw: object) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidInput("'input' must be a JSON object.", fields={"input": "must be an object"})
    try:
        parsed = operation.input_model.model_validate(raw)
    except ValidationError as exc:
        fields = validation_details(exc, "input")
        first = next(iter(fields.items()))
        raise InvalidInput(
            f"Invalid input for {operation.name}: {first[0]}: {first[1]}.", fields=fields
        ) from None
    return parsed.model_dump()
