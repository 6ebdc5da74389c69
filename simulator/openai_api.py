"""The OpenAI-compatible endpoints: chat completions, image generation, models, image files."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from typing import Any

from flask import Blueprint, Response, abort, current_app, g, request

from simulator.answers import (
    count_tokens,
    generate_content_for,
    make_png,
    prompt_tokens,
    truncate_tokens,
)
from simulator.errors import (
    RequestError,
    int_field,
    json_object,
    json_response,
    raw_body,
    str_field,
)
from simulator.faults import counted
from simulator.ratelimits import rate_limited

MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1", "hidream-full", "dall-e-3", "gpt-image-1")
# The output caps OpenAI enforces: a larger max_tokens is a 400, not a shorter answer.
OUTPUT_CAPS = {"gpt-4o-mini": 16_384, "gpt-4o": 16_384, "gpt-4.1": 32_768}
IMAGE_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
HOST_HEADER_RE = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")

openai = Blueprint("openai", __name__)


@openai.post("/v1/chat/completions")
@rate_limited
@counted("chat")
def chat() -> Response:
    payload = json_object()
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "You must provide a model parameter.")
    messages = payload.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)
    ):
        raise RequestError(400, "'messages' must be a non-empty array of message objects.")
    if payload.get("stream"):
        raise RequestError(400, "Streaming is not supported by the simulated provider.")
    limit = int_field(payload, "max_completion_tokens", None, 1, 1_000_000)
    if limit is None:
        limit = int_field(payload, "max_tokens", None, 1, 1_000_000)
    cap = OUTPUT_CAPS.get(model)
    if limit is not None and cap is not None and limit > cap:
        raise RequestError(
            400,
            f"max_tokens is too large: {limit}. This model supports at most {cap} "
            f"completion tokens, whereas you provided {limit}.",
            "invalid_value",
        )
    n = int_field(payload, "n", 1, 1, 8) or 1

    content, truncated = spoiled(generate_content_for(messages), limit), False
    if limit is not None:
        content, truncated = truncate_tokens(content, limit)
    message = {"role": "assistant", "content": content, "refusal": None}
    choices = [
        {
            "index": i,
            "message": message,
            "logprobs": None,
            "finish_reason": "length" if truncated else "stop",
        }
        for i in range(n)
    ]
    usage_in, usage_out = prompt_tokens(messages), count_tokens(content) * n
    body = {
        "id": "chatcmpl-" + hashlib.sha256(raw_body()).hexdigest()[:24],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": usage_in,
            "completion_tokens": usage_out,
            "total_tokens": usage_in + usage_out,
        },
        "system_fingerprint": "fp_simulated",
    }
    return json_response(200, body)


def spoiled(content: str, limit: int | None) -> str:
    """The answer a fault rule asked for instead: past `max_tokens`, or not JSON."""
    answer = g.get("sim_answer")
    if answer == "overlong":
        return content + " more" * ((limit or 1000) + 1)
    if answer == "not_json":
        return "Here is what I came up with: " + content[:200]
    return content


@openai.post("/v1/images/generations")
@rate_limited
@counted("images")
def images() -> Response:
    payload = json_object()
    prompt = payload.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError(400, "'prompt' must be a non-empty string.")
    model = str_field(payload, "model", "dall-e-3")
    n = int_field(payload, "n", 1, 1, 10) or 1
    response_format = payload.get("response_format") or "url"
    if response_format not in ("url", "b64_json"):
        raise RequestError(400, "'response_format' must be 'url' or 'b64_json'.")
    base = _public_url()
    data = []
    for i in range(n):
        name = hashlib.sha256(f"{model}|{prompt}|{i}".encode()).hexdigest()[:32]
        item: dict[str, Any] = {"revised_prompt": prompt}
        if response_format == "b64_json":
            item["b64_json"] = base64.b64encode(make_png(name)).decode("ascii")
        else:
            item["url"] = f"{base}/images/{name}.png"
        data.append(item)
    return json_response(200, {"created": int(time.time()), "data": data})


@openai.get("/images/<name>.png")
def image(name: str) -> Response:
    if not IMAGE_NAME_RE.fullmatch(name):
        abort(404)
    response = Response(make_png(name), 200, content_type="image/png")
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response


@openai.get("/v1/models")
def models() -> Response:
    data = [
        {"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "simulated"}
        for model in MODELS
    ]
    return json_response(200, {"object": "list", "data": data})


def _public_url() -> str:
    """The base URL the client used, so image links work behind port mapping."""
    host = request.headers.get("Host", "")
    if HOST_HEADER_RE.match(host):
        return f"http://{host}"
    url: str = current_app.config["SIM_URL"]
    return url
