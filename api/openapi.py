"""`GET /v1/openapi.json`: an OpenAPI 3.1 document built from the app itself.

Paths and methods come from Flask's URL map; request bodies from the pydantic models the
views validate with (`api.validation.json_body`), query parameters from their
`query_params` models, responses from `api.schemas.responds`, auth and roles from the
security decorators, and the error statuses of each operation from all of those. So the
document cannot drift from the routes, and tests hold the answers to it.

Values that are data rather than code (model names, plan slugs) are read from the
database when the document is served, so their enums are what the API accepts now.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Flask, current_app
from pydantic import BaseModel
from werkzeug.routing import IntegerConverter

from api.db import db
from api.schemas import ErrorOut, OpenApiOut, Responses, responds
from api.validation import IdConverter, Query
from billing import plans, policy
from billing.operations import OPERATIONS

bp = Blueprint("openapi", __name__)

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{model}"
ERROR_RESPONSES = {
    400: "Malformed request.",
    401: "Missing or wrong credentials.",
    402: "Payment required: `insufficient_credits` (`required`, `available`), "
    "`budget_exceeded` or `subscription_required`.",
    403: "Account suspended or cancelled, role or model not allowed, or a limit reached.",
    404: "Not found (or another account's).",
    409: "Conflict with the current state: an idempotency key reused with another body, "
    "a duplicate, a purchase no longer pending ...",
    410: "Gone: an expired invitation.",
    422: "Invalid input (`fields` names each problem), or a body over MAX_REQUEST_BYTES.",
    429: "Rate limited: retry after `Retry-After` seconds.",
    502: "An outside service (Stripe, keyword research) did not answer; nothing was charged.",
    503: "Database, broker or rate limiter unavailable, or keyword research busy "
    "(`research_busy`); nothing was charged.",
}
_PATH_PARAMETER = re.compile(r"<(?:(?P<converter>[^:>]+):)?(?P<name>\w+)>")
REQUEST_ID = {
    "name": "X-Request-Id",
    "in": "header",
    "required": False,
    "description": "Your id for this request (1-100 of `A-Za-z0-9._:-`; any other value is "
    "replaced by one we make up). Returned in the response's `X-Request-Id` and bound to "
    "every log line of the request and of the jobs it submits.",
    "schema": {"type": "string"},
}
RESPONSE_HEADERS = {
    "X-Request-Id": {
        "description": "The request's id (yours, or one made up): quote it to operators.",
        "required": True,
        "schema": {"type": "string", "minLength": 1},
    }
}
RETRY_AFTER = {"description": "Seconds to wait.", "schema": {"type": "string"}}


@dataclass
class Choices:
    """Data-driven enums: model names per model type and plan slugs."""

    models: dict[str, list[str]] = field(default_factory=dict)
    public_plans: list[str] = field(default_factory=list)


@bp.get("/v1/openapi.json")
@responds(OpenApiOut)
def openapi_document() -> dict[str, Any]:
    """This document (OpenAPI 3.1)."""
    session = db()
    choices = Choices(
        models=policy.active_model_names(session),
        public_plans=[plan.slug for plan in plans.list_public(session)],
    )
    return build_document(current_app, choices)


def undocumented_responses(app: Flask) -> list[str]:
    """Endpoints without `@responds`: each must declare what it answers."""
    return sorted(
        f"{method} {rule.rule} ({rule.endpoint})"
        for rule in app.url_map.iter_rules()
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
        if not isinstance(
            getattr(app.view_functions[rule.endpoint], "openapi_responses", None), Responses
        )
    )


def build_document(app: Flask, choices: Choices | None = None) -> dict[str, Any]:
    builder = DocumentBuilder(choices or Choices())
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions[rule.endpoint]
        path = _PATH_PARAMETER.sub(r"{\g<name>}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = builder.operation(rule, view)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "aijobs: credit-metered AI jobs",
            "version": "1",
            "description": "Submit AI jobs against a credit ledger. Every error is "
            '`{"error": {"code", "message", ...}}`; listings are cursor-paged '
            "(`limit`, `cursor` = the previous page's `next_cursor`). See README.md.",
        },
        "paths": paths,
        "components": {
            "schemas": builder.schemas,
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (`aij_...`), or a login token (`tok_...`).",
                },
                "adminToken": {"type": "apiKey", "in": "header", "name": "X-Admin-Token"},
            },
            "parameters": {"RequestId": REQUEST_ID},
            "headers": {"X-Request-Id": RESPONSE_HEADERS["X-Request-Id"]},
            "responses": {
                str(status): _error_response(status, text)
                for status, text in ERROR_RESPONSES.items()
            },
        },
    }


def _error_response(status: int, text: str) -> dict[str, Any]:
    headers: dict[str, Any] = {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}}
    if status == 429:
        headers["Retry-After"] = {**RETRY_AFTER, "required": True}
    elif status == 503:
        headers["Retry-After"] = RETRY_AFTER
    return {
        "description": text,
        "headers": headers,
        "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}},
    }


class DocumentBuilder:
    def __init__(self, choices: Choices) -> None:
        self.choices = choices
        self.schemas: dict[str, Any] = {}
        self.model(ErrorOut, name="Error")

    def model(self, model: type[BaseModel], name: str | None = None) -> dict[str, Any]:
        """A `$ref` to `model`'s schema, registered (with what it uses) in components."""
        name = name or model.__name__
        if name not in self.schemas:
            custom = getattr(model, "openapi_schema", None)
            if custom is not None:
                schema = custom(self)
            else:
                schema = model.model_json_schema(ref_template=REF, mode="serialization")
                for nested, definition in schema.pop("$defs", {}).items():
                    self.schemas.setdefault(nested, definition)
            self.schemas[name] = schema
        return {"$ref": REF.format(model=name)}

    def request_model(self, model: type[BaseModel]) -> dict[str, Any]:
        """A `$ref` to the schema of a body the view validates with `model`."""
        name = model.__name__
        if name not in self.schemas:
            custom = getattr(model, "openapi_schema", None)
            self.schemas[name] = custom(self) if custom is not None else self.plain(model)
        return {"$ref": REF.format(model=name)}

    def plain(self, model: type[BaseModel]) -> dict[str, Any]:
        """`model`'s own validation schema (what it uses registered in components)."""
        schema = model.model_json_schema(ref_template=REF, mode="validation")
        for nested, definition in schema.pop("$defs", {}).items():
            self.schemas.setdefault(nested, self.fill_choices(definition))
        filled: dict[str, Any] = self.fill_choices(schema)
        return filled

    def fill_choices(self, schema: Any) -> Any:
        """`x-choices: "public_plans"` (or "text_models", "image_models", "models")
        becomes the enum of what the database holds now."""
        if isinstance(schema, list):
            return [self.fill_choices(item) for item in schema]
        if not isinstance(schema, dict):
            return schema
        filled = {key: self.fill_choices(value) for key, value in schema.items()}
        kind = filled.pop("x-choices", None)
        if kind is not None:
            strings = [v for v in filled.get("anyOf", []) if v.get("type") == "string"]
            for variant in strings or [filled]:  # `str | None`: the string variant
                variant["enum"] = self.choice(kind)
        return filled

    def choice(self, kind: str) -> list[str]:
        if kind.endswith("_models"):
            return list(self.choices.models.get(kind.removesuffix("_models"), []))
        if kind == "models":
            return sorted({name for names in self.choices.models.values() for name in names})
        values: list[str] = getattr(self.choices, kind)
        return list(values)

    def per_operation(self, model: type[BaseModel]) -> dict[str, Any]:
        """A job body (`model`: operation, input, model ...) as one variant per operation,
        discriminated by `operation`: `input` is that operation's input model and `model`
        one of the active models of its type."""
        base = model.model_json_schema(ref_template=REF, mode="validation")
        prefix = model.__name__.removesuffix("Body")
        variants: dict[str, str] = {}
        for operation in OPERATIONS.values():
            properties = copy.deepcopy(base["properties"])
            properties["operation"] = {"type": "string", "const": operation.name}
            models = self.choice(f"{operation.model_type}_models")
            examples = [{"operation": operation.name, "model": m} for m in models[:1]]
            if "input" in properties:
                properties["input"] = self.request_model(operation.input_model)
                inputs = operation.input_model.model_json_schema().get("examples", [])
                examples = [{"operation": operation.name, "input": e} for e in inputs]
            if "anyOf" in properties["model"]:
                properties["model"] = {
                    "anyOf": [{"type": "string", "enum": models}, {"type": "null"}],
                    "default": None,
                    "description": "Default: your AI settings, else the plan's default.",
                }
            else:
                properties["model"] = {"type": "string", "enum": models}
            name = prefix + "".join(part.title() for part in operation.name.split("_"))
            self.schemas[name] = {
                "type": "object",
                "title": name,
                "properties": properties,
                "required": base["required"],
                "additionalProperties": False,
                "examples": examples,
            }
            variants[operation.name] = REF.format(model=name)
        return {
            "title": model.__name__,
            "description": (model.__doc__ or "").strip(),
            "oneOf": [{"$ref": ref} for ref in variants.values()],
            "discriminator": {"propertyName": "operation", "mapping": variants},
        }

    def operation(self, rule: Any, view: Any) -> dict[str, Any]:
        auth: str | None = getattr(view, "openapi_auth", None)
        action: str | None = getattr(view, "openapi_action", None)
        body: type[BaseModel] | type[dict[str, Any]] | str | None = getattr(
            view, "openapi_body", None
        )
        query: type[Query] | None = getattr(view, "openapi_query", None)
        declared: Responses | None = getattr(view, "openapi_responses", None)
        doc = (view.__doc__ or "").strip()
        summary, _, rest = doc.partition("\n")
        operation: dict[str, Any] = {
            "operationId": rule.endpoint.replace(".", "_"),
            "tags": [rule.endpoint.split(".")[0]],
            "summary": summary.strip() or rule.endpoint.split(".")[-1].replace("_", " "),
            "security": [{auth: []}] if auth else [],
        }
        notes = [" ".join(rest.split())] if rest.strip() else []
        if action:
            notes.append(f"Needs a role allowed to `{action}` (billing/permissions.py).")
        if notes:
            operation["description"] = "\n\n".join(notes)
        parameters = [
            _path_parameter(rule, match["name"]) for match in _PATH_PARAMETER.finditer(rule.rule)
        ]
        if query is not None:
            parameters += self.query_parameters(query)
        parameters += list(getattr(view, "openapi_headers", ()))
        parameters.append({"$ref": "#/components/parameters/RequestId"})
        operation["parameters"] = parameters
        if isinstance(body, str):  # a media type read as a stream (api.validation.csv_body)
            text = getattr(view, "openapi_body_schema", {"type": "string"})
            operation["requestBody"] = {"required": True, "content": {body: {"schema": text}}}
        elif isinstance(body, type) and issubclass(body, BaseModel):
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": self.request_model(body)}},
            }
        elif body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        operation["responses"] = {
            **self.success(declared),
            **self.errors(rule, auth, action, body, query, declared),
        }
        return operation

    def query_parameters(self, query: type[Query]) -> list[dict[str, Any]]:
        schema = query.model_json_schema(ref_template=REF, mode="validation")
        definitions = schema.get("$defs", {})
        required = set(schema.get("required", []))
        found = []
        for name, prop in schema.get("properties", {}).items():
            prop = _inline(prop, definitions)
            description = prop.pop("description", None)
            prop.pop("title", None)
            parameter: dict[str, Any] = {
                "name": name,
                "in": "query",
                "required": name in required,
                "schema": self.fill_choices(_not_null(prop)),
            }
            if description:
                parameter["description"] = description
            found.append(parameter)
        return found

    def success(self, declared: Responses | None) -> dict[str, Any]:
        headers = {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}}
        if declared is None:  # tests name every endpoint in this state
            return {
                "2XX": {
                    "description": "Undocumented.",
                    "headers": headers,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            }
        headers.update(declared.headers)
        answer: dict[str, Any] = {"description": "Success.", "headers": headers}
        content = {}
        if declared.model is not None:
            content["application/json"] = {"schema": self.model(declared.model)}
        content.update({media: {"schema": s} for media, s in declared.media_types.items()})
        if content:
            answer["content"] = content
        else:
            answer["description"] = "Success, no body."
        return {str(declared.status): answer}

    def errors(
        self,
        rule: Any,
        auth: str | None,
        action: str | None,
        body: object,
        query: object,
        declared: Responses | None,
    ) -> dict[str, Any]:
        """The statuses the decorators imply, and what the view declared itself."""
        statuses = {503}
        if auth == "apiKey":  # no key; suspended; no plan; rate limited
            statuses |= {401, 402, 403, 429}
        elif auth == "adminToken":
            statuses |= {401}
        if action:
            statuses |= {403}
        if body is not None or query is not None:
            statuses |= {422}
        if "<" in rule.rule or _names_a_resource(body) or _names_a_resource(query):
            statuses |= {404}
        if declared is not None:
            statuses |= set(declared.errors)
        return {str(s): {"$ref": f"#/components/responses/{s}"} for s in sorted(statuses)}


def _names_a_resource(model: object) -> bool:
    """A body or query naming something by id (`site_id`, `ids` ...) is a 404 when it is
    not there (or another account's)."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return False
    return any(name.endswith(("_id", "_ids")) or name == "ids" for name in model.model_fields)


def _path_parameter(rule: Any, name: str) -> dict[str, Any]:
    """The schema of a URL variable, from its converter (`int(min=1, max=...)`, `id`)."""
    converter = rule._converters[name]
    schema: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 100}
    if isinstance(converter, IntegerConverter):
        schema = {"type": "integer", "minimum": converter.min or 0}
        if converter.max is not None:
            schema["maximum"] = converter.max
    elif isinstance(converter, IdConverter):
        schema["pattern"] = f"^{converter.regex}$"
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _inline(schema: Any, definitions: dict[str, Any]) -> Any:
    """`schema` with `$ref`s into `definitions` replaced by what they point at."""
    if isinstance(schema, list):
        return [_inline(item, definitions) for item in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
        target = copy.deepcopy(definitions[ref.rsplit("/", 1)[-1]])
        return _inline({**target, **{k: v for k, v in schema.items() if k != "$ref"}}, definitions)
    return {key: _inline(value, definitions) for key, value in schema.items()}


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent rather than null: drop `null` from its schema."""
    variants = schema.get("anyOf")
    if isinstance(variants, list):
        rest = [v for v in variants if v != {"type": "null"}]
        if len(rest) == 1:
            merged = {k: v for k, v in schema.items() if k != "anyOf"}
            schema = {**rest[0], **merged}
        else:
            schema = {**schema, "anyOf": rest}
    if schema.get("default", 0) is None:
        schema = {k: v for k, v in schema.items() if k != "default"}
    return schema
