"""`GET /v1/openapi.json`: an OpenAPI 3.1 document built from the app itself.

Paths and methods come from Flask's URL map, request bodies from the pydantic models
the views validate with (`api.validation.json_body`), auth and roles from the security
decorators, so the document cannot drift from the routes. Response bodies are
described in README.md ("API") and `shared/API.md`; here every success is a JSON
object and every error the one error shape.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Flask, current_app
from pydantic import BaseModel

bp = Blueprint("openapi", __name__)

OPENAPI_VERSION = "3.1.0"
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            "additionalProperties": True,
        }
    },
}
ERROR_RESPONSES = {
    "400": "Malformed request.",
    "401": "Missing or wrong credentials.",
    "402": "Not enough credits (`required`, `available`) or no subscription.",
    "403": "Account suspended or cancelled, role or model not allowed, or a limit reached.",
    "404": "Not found (or another account's).",
    "409": "Conflict: idempotency key reused with another body, duplicate reference, ...",
    "422": "Invalid input, or a body over MAX_REQUEST_BYTES (`fields` names each problem).",
    "429": "Rate limited (`Retry-After`).",
    "503": "Database or broker unavailable.",
}
_PATH_PARAMETER = re.compile(r"<(?:(?P<converter>\w+):)?(?P<name>\w+)>")


@bp.get("/v1/openapi.json")
def openapi_document() -> dict[str, Any]:
    return build_document(current_app)


def build_document(app: Flask) -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions[rule.endpoint]
        path = _PATH_PARAMETER.sub(r"{\g<name>}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(rule, view, schemas)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "aijobs: credit-metered AI jobs",
            "version": "1",
            "description": "Submit AI jobs against a credit ledger; see README.md.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key, or a login token (`tok_...`).",
                },
                "adminToken": {"type": "apiKey", "in": "header", "name": "X-Admin-Token"},
            },
            "responses": {
                status: {
                    "description": text,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
                for status, text in ERROR_RESPONSES.items()
            },
        },
    }


def _operation(rule: Any, view: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    auth: str | None = getattr(view, "openapi_auth", None)
    action: str | None = getattr(view, "openapi_action", None)
    body: type[BaseModel] | type[dict[str, Any]] | str | None = getattr(view, "openapi_body", None)
    doc = (view.__doc__ or "").strip()
    operation: dict[str, Any] = {
        "operationId": rule.endpoint.replace(".", "_"),
        "tags": [rule.endpoint.split(".")[0]],
        "summary": doc.splitlines()[0] if doc else rule.endpoint.split(".")[-1].replace("_", " "),
        "security": [{auth: []}] if auth else [],
        "responses": {
            "2XX": {
                "description": "Success.",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            **_error_refs(auth, body),
        },
    }
    if action:
        operation["description"] = f"Needs a role allowed to `{action}` (billing/permissions.py)."
    parameters = [
        {
            "name": match["name"],
            "in": "path",
            "required": True,
            "schema": {"type": "integer" if match["converter"] == "int" else "string"},
        }
        for match in _PATH_PARAMETER.finditer(rule.rule)
    ]
    if parameters:
        operation["parameters"] = parameters
    if isinstance(body, str):  # a media type read as a stream (api.validation.csv_body)
        operation["requestBody"] = {
            "required": True,
            "content": {body: {"schema": {"type": "string"}}},
        }
    elif body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _body_schema(body, schemas)}},
        }
    return operation


def _body_schema(body: type[BaseModel] | type[dict[str, Any]], schemas: dict[str, Any]) -> Any:
    if not (isinstance(body, type) and issubclass(body, BaseModel)):
        return {"type": "object"}
    schema = body.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    schemas[body.__name__] = schema
    return {"$ref": f"#/components/schemas/{body.__name__}"}


def _error_refs(auth: str | None, body: object) -> dict[str, Any]:
    statuses = ["404", "503"]
    if auth:
        statuses += ["401"]
    if auth == "apiKey":
        statuses += ["402", "403", "429"]
    if body is not None:
        statuses += ["400", "422"]
    return {s: {"$ref": f"#/components/responses/{s}"} for s in sorted(set(statuses))}
