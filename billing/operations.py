"""The five AI operations: their input schema, queue and model type.

The API validates with these models and the workers read the normalised input back,
so a job's input means the same thing on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from billing.errors import InvalidInput

ShortText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]
ModelType = Literal["text", "image"]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ClusteringInput(_Input):
    keywords: list[ShortText] = Field(default_factory=list, max_length=1000)
    keyword_ids: list[int] = Field(default_factory=list, max_length=1000)


class ClusterRef(_Input):
    name: ShortText
    keywords: list[ShortText] = Field(default_factory=list, max_length=200)


class IdeaGenerationInput(_Input):
    cluster: ClusterRef
    count: int = Field(default=3, ge=1, le=20)


class ContentGenerationInput(_Input):
    title: ShortText
    word_count: int = Field(default=800, ge=100, le=5000)
    keywords: list[ShortText] = Field(default_factory=list, max_length=50)


class ImagePromptExtractionInput(_Input):
    text: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50_000)]
    count: int = Field(default=3, ge=1, le=10)


class ImageGenerationInput(_Input):
    prompt: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4000)]
    count: int = Field(default=1, ge=1, le=10)


@dataclass(frozen=True)
class Operation:
    name: str
    queue: str
    model_type: ModelType
    input_model: type[_Input]
    artifact_label: str


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation("clustering", "text", "text", ClusteringInput, "clusters"),
        Operation("idea_generation", "text", "text", IdeaGenerationInput, "ideas"),
        Operation("content_generation", "text", "text", ContentGenerationInput, "articles"),
        Operation("image_prompt_extraction", "text", "text", ImagePromptExtractionInput, "prompts"),
        Operation("image_generation", "image", "image", ImageGenerationInput, "images"),
    )
}


def get_operation(name: object) -> Operation:
    if not isinstance(name, str) or name not in OPERATIONS:
        raise InvalidInput(
            f"Unknown operation {name!r}. Choose one of: {', '.join(OPERATIONS)}.",
            fields={"operation": f"must be one of {sorted(OPERATIONS)}"},
        )
    return OPERATIONS[name]


def validation_details(exc: ValidationError, prefix: str = "") -> dict[str, str]:
    """Pydantic errors as {"input.keywords.0": "String should have at most 300 characters"}."""
    details: dict[str, str] = {}
    for error in exc.errors(include_url=False):
        path = ".".join(str(part) for part in (prefix, *error["loc"]) if part != "")
        details[path or prefix or "body"] = error["msg"]
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
    data = parsed.model_dump()
    if operation.name == "clustering" and not (data["keywords"] or data["keyword_ids"]):
        raise InvalidInput(
            "Clustering needs at least one keyword ('keywords' or 'keyword_ids').",
            fields={"input.keywords": "at least one keyword is required"},
        )
    return data
