"""Request parsing: a JSON object body validated by a pydantic model, or a 422.

Every JSON body goes through `parse_json` (the app's JSON provider), so what no handler
and no database can take is refused here, once, before any view runs: nesting deeper
than `MAX_JSON_DEPTH` (checked by a flat scan before the parser recurses), strings with
NUL or lone surrogates (PostgreSQL refuses them, SQLite would store them), NaN and
Infinity (not JSON), and bodies that are not UTF-8.
"""

from __future__ import annotations

import functools
import io
import json
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, TypeVar

from flask import request
from flask.json.provider import DefaultJSONProvider
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.routing import BaseConverter

from api.errors import ApiError, invalid
from billing.paging import MAX_PAGE_SIZE
from billing.webhook_urls import UrlPolicy, url_policy
from settings import get_settings

M = TypeVar("M", bound=BaseModel)
Q = TypeVar("Q", bound="Query")
R = TypeVar("R")

MAX_JSON_DEPTH = 64
# Brackets, quotes and backslashes: all the depth scan needs to look at.
_STRUCTURE = re.compile(r'[\[\]{}"\\]')
# NUL, or a UTF-16 surrogate on its own (JSON's "\ud800" escape): no database stores them.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> bool:
    """Text a request body may carry (no NUL, no lone surrogate): what we hand clients to
    send back must pass this too."""
    return not _UNSTORABLE.search(text)


def parse_json(data: str | bytes) -> Any:
    """A JSON document, or a 422 naming what is wrong with it (`ValueError` for text
    that is not JSON at all, which the caller reports as it sees fit)."""
    if isinstance(data, bytes | bytearray):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise _body_error(
                "The request body must be UTF-8 encoded JSON.", "UTF-8 JSON"
            ) from None
    if _deeper_than(data, MAX_JSON_DEPTH):
        raise _body_error(
            f"The request body is nested deeper than {MAX_JSON_DEPTH} levels.",
            f"at most {MAX_JSON_DEPTH} levels of nesting",
        )
    value = json.loads(data, parse_constant=_no_constant, parse_float=_number)
    _check_strings(value, "")
    return value


def integral(value: Any) -> Any:
    """A whole number however it is spelled (`98`, `98.0`, `"98.0"`, `1e2`) as an int:
    JSON Schema counts 98.0 as an integer, so an integer field must take it. Anything
    else is returned as it came, for the field's own validation to refuse."""
    if isinstance(value, bool) or not isinstance(value, str | float | int):
        return value
    try:
        number = Decimal(value.strip() if isinstance(value, str) else value)
    except (InvalidOperation, ValueError):
        return value
    # Bounded first: int() of 1e999999999 would build a huge number.
    if number.is_finite() and abs(number) < 2**64 and number == number.to_integral_value():
        return int(number)
    return value


def _number(literal: str) -> int | float:
    """A JSON number with a fraction or exponent: an int when it is whole (see
    `integral`), else a float; one too large for a float is refused."""
    whole = integral(literal)
    if isinstance(whole, int):
        return whole
    value = float(literal)
    if value in (float("inf"), float("-inf")):
        raise _body_error(f"The number {literal[:40]} is too large.", "finite numbers")
    return value


class JsonProvider(DefaultJSONProvider):
    """Flask's JSON, with every request body read through `parse_json`."""

    sort_keys = False

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return parse_json(s)


def _deeper_than(text: str, limit: int) -> bool:
    """Nesting depth by a flat scan (no recursion, linear): brackets outside strings."""
    depth, in_string, escaped_at = 0, False, -1
    for match in _STRUCTURE.finditer(text):
        at, char = match.start(), match.group()
        if at == escaped_at:
            continue
        if in_string:
            if char == "\\":
                escaped_at = at + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_strings(value: Any, path: str) -> None:
    """Every key and string, at any depth (bounded above), must be storable text."""
    if isinstance(value, str):
        if _UNSTORABLE.search(value):
            raise _unstorable(path or "body")
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if _UNSTORABLE.search(key):
                raise _unstorable(_UNSTORABLE.sub("?", where))
            _check_strings(item, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_strings(item, f"{path}.{index}" if path else str(index))


def _unstorable(field: str) -> ApiError:
    return ApiError(
        422,
        "invalid_request",
        f"Invalid request: {field}: text must not contain NUL characters or lone surrogates.",
        fields={field: "text without NUL characters or lone surrogates"},
    )


def _body_error(message: str, expected: str) -> ApiError:
    return ApiError(422, "invalid_request", message, fields={"body": expected})


def json_object() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(
            422,
            "invalid_request",
            "The request body must be a JSON object.",
            fields={"body": "a JSON object"},
        )
    return body


def parse_body(model: type[M]) -> M:
    body = json_object()
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise invalid(exc) from None


def json_body(
    model: type[BaseModel] | type[dict[str, Any]],
    *,
    documented_as: type[BaseModel] | None = None,
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Hand the view its JSON body as `body=`: validated by the pydantic `model`, or as
    the plain object when `model` is `dict` (billing validates those fields itself, with
    the model given as `documented_as`).

    Put it under the auth decorators, so a caller without access gets 401/403 before any
    422. The OpenAPI document (api/openapi.py) reads `model` from the view.
    """

    def decorate(view: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> R:
            if model is dict:
                kwargs["body"] = json_object()
            else:
                kwargs["body"] = parse_body(model)  # type: ignore[arg-type]
            return view(*args, **kwargs)

        wrapper.__dict__["openapi_body"] = documented_as or model
        return wrapper

    return decorate


def csv_body(
    max_bytes: Callable[[], int], schema: dict[str, Any] | None = None
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Hand the view its `text/csv` body as `lines=`, a stream of text lines read as the
    view consumes them (nothing is buffered whole), up to `max_bytes()` bytes. `schema`
    describes the text for the OpenAPI document.

    A body that is not UTF-8 or is too large is a 422 even mid-stream: the request's
    transaction then rolls back, so nothing of it is written.
    """

    def decorate(view: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> R:
            if request.mimetype != "text/csv":
                raise ApiError(
                    422,
                    "invalid_request",
                    "Send the CSV as the request body with 'Content-Type: text/csv'.",
                    fields={"body": "text/csv"},
                )
            limit = max_bytes()
            request.max_content_length = limit
            try:
                stream = request.stream
                kwargs["lines"] = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")  # type: ignore[arg-type]
                return view(*args, **kwargs)
            except UnicodeDecodeError as exc:
                raise ApiError(
                    422, "invalid_request", f"The CSV is not valid UTF-8 (byte {exc.start}).",
                    fields={"body": "UTF-8 text"},
                ) from None  # fmt: skip
            except RequestEntityTooLarge:
                raise ApiError(
                    422, "invalid_request", f"The CSV is too large (limit {limit} bytes).",
                    fields={"body": f"at most {limit} bytes"},
                ) from None  # fmt: skip

        wrapper.__dict__["openapi_body"] = "text/csv"
        wrapper.__dict__["openapi_body_schema"] = schema or {"type": "string"}
        return wrapper

    return decorate


# What the SSRF policy (billing/webhook_urls.py) lets through, as far as a pattern can
# say: http(s), a host name (not a local or metadata one), a port 1-65535. A public IP
# address is accepted too; what a name resolves to is checked when it is used.
_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
WEBHOOK_URL = Annotated[
    str,
    Field(
        max_length=2000,
        json_schema_extra={
            "pattern": r"^https?://(?!(?:[^/?#:]*\.)?(?:localhost|local|internal|localdomain|goog)"
            r"(?:[:/?#]|$))(?!(?:metadata|instance-data)(?:[.:/?#]|$))"
            r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}"
            rf"(?::{_PORT})?(?:[/?#][!-\[\]-~]*)?$",
            "examples": ["https://hooks.example.com/aijobs"],
        },
    ),
]


class IdConverter(BaseConverter):
    """`<id:job_id>`: a public id (`job_3f9c...`), so a sibling route's literal segment
    (`/v1/jobs/estimate`, `/v1/team/invite`) is never taken for one."""

    regex = r"[a-z]+_[A-Za-z0-9]+"


QueryInt = Annotated[int, BeforeValidator(integral)]


class Query(BaseModel):
    """Base of the query-string models views declare with `query_params`. Values arrive
    as text, so these models are not strict; unknown parameters are ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class PageQuery(Query):
    """`limit` and `cursor`, which every paged listing takes (rules: billing/paging.py)."""

    limit: QueryInt = Field(default=20, ge=1, le=MAX_PAGE_SIZE, description="Rows per page.")
    cursor: str | None = Field(
        default=None,
        max_length=500,
        description="`next_cursor` of the previous page (opaque; only one you were given).",
    )


def query_params(model: type[Q]) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Hand the view its query string as `query=`, validated by `model`, or a 422 naming
    each bad parameter. The OpenAPI document lists `model`'s fields as the operation's
    query parameters, so what is documented is what is checked. Put it under the auth
    decorators, like `json_body`."""

    def decorate(view: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> R:
            raw = request.args.to_dict()
            _check_strings(raw, "")  # a NUL in `?q=` reaches PostgreSQL otherwise: 500
            try:
                kwargs["query"] = model.model_validate(raw)
            except ValidationError as exc:
                raise invalid(exc) from None
            return view(*args, **kwargs)

        wrapper.__dict__["openapi_query"] = model
        return wrapper

    return decorate


def request_headers(
    *parameters: dict[str, Any],
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Declare request headers the view reads (OpenAPI parameter objects, `in: header`)."""

    def decorate(view: Callable[..., R]) -> Callable[..., R]:
        view.__dict__["openapi_headers"] = parameters
        return view

    return decorate


def webhook_url_policy() -> UrlPolicy:
    """The policy for webhook URLs a tenant gives us (private addresses only in dev,
    never the stack's own ports)."""
    settings = get_settings()
    return url_policy(
        allow_private=settings.webhook_allow_private_urls,
        deny_ports=settings.webhook_deny_ports,
    )
