"""Request ids: taken from `X-Request-Id` (when sane) or made up, bound to every log line
of the request and of the jobs it enqueues, and returned in the response header."""

from __future__ import annotations

import re
import uuid

from flask import Flask, Response, g, request

import logs

HEADER = "X-Request-Id"
_SANE = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")


def init_app(app: Flask) -> None:
    @app.before_request
    def _bind() -> None:
        offered = request.headers.get(HEADER, "")
        g.request_id = offered if _SANE.match(offered) else uuid.uuid4().hex
        logs.clear()
        logs.bind(request_id=g.request_id)

    @app.after_request
    def _echo(response: Response) -> Response:
        response.headers[HEADER] = g.get("request_id") or uuid.uuid4().hex
        return response

    @app.teardown_request
    def _unbind(_exc: BaseException | None) -> None:
        logs.clear()
