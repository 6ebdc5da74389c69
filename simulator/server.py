"""The simulator's HTTP server: a small Flask app, one blueprint per outside service, served
by werkzeug's threaded server (a thread per connection, so hundreds of slow calls overlap).

Run it with ``python -m simulator --host 127.0.0.1 --port 0``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socketserver
import sys
import threading
from types import FrameType
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from simulator.ahrefs import ahrefs
from simulator.errors import RequestError, error_response, json_response
from simulator.faults import FaultInjector, control
from simulator.openai_api import openai
from simulator.ratelimits import RateLimits
from simulator.ratelimits import control as ratelimit_control
from simulator.stripe_api import CheckoutSessions, stripe

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024
COUNTED_KINDS = ("chat", "images", "ahrefs", "stripe")


def create_app(faults: FaultInjector) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["simulator.faults"] = faults
    app.extensions["simulator.stripe"] = CheckoutSessions()
    app.extensions["simulator.ratelimits"] = RateLimits()
    for blueprint in (openai, ahrefs, stripe, control, ratelimit_control):
        app.register_blueprint(blueprint)
    app.add_url_rule("/healthz", "healthz", lambda: json_response(200, {"status": "ok"}))
    app.register_error_handler(RequestError, RequestError.response)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _internal_error)
    return app


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    if status == 404:
        message, code = f"Invalid URL ({request.method} {request.path})", "not_found"
        return error_response(404, message, code)
    if status == 405:
        return error_response(405, f"Method {request.method} not allowed on {request.path}.")
    if status == 413:
        return error_response(413, "Request body too large.")
    return error_response(status, exc.description or exc.name)


def _internal_error(exc: Exception) -> Response:
    logger.error("simulated provider failed on %s %s", request.method, request.path, exc_info=exc)
    return error_response(500, "The simulated provider hit an internal error.")


class _RequestHandler(WSGIRequestHandler):
    # Headers and body go out in two writes; without TCP_NODELAY each reply waits ~40 ms
    # for the client's delayed ACK.
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    server_version = "simulated-provider/1.0"
    sys_version = ""

    def log(self, type: str, message: str, *args: Any) -> None:
        """Keep test output quiet; the access log is only interesting when debugging."""
        logger.debug("%s - %s", self.address_string(), message % args if args else message)


class SimulatedProviderServer(ThreadedWSGIServer):
    """The simulator on one port; `faults` holds its fault queue and request counters.

    werkzeug closes each connection after one answer (no keep-alive): ~1 ms per call.
    """

    # Open client connections must not make server_close() (or SIGTERM) wait for them.
    block_on_close = False

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.faults = FaultInjector(COUNTED_KINDS)
        app = create_app(self.faults)
        super().__init__(host, port, app, handler=_RequestHandler)
        app.config["SIM_URL"] = self.url

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse-DNS lookup, which can stall start-up."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def log(self, type: str, message: str, *args: Any) -> None:
        logger.log(logging.ERROR if type == "error" else logging.DEBUG, message, *args)

    @property
    def url(self) -> str:
        host = f"[{self.server_name}]" if ":" in self.server_name else self.server_name
        return f"http://{host}:{self.server_port}"


def make_server(host: str = "127.0.0.1", port: int = 0) -> SimulatedProviderServer:
    """Bind (port 0 picks a free port) without serving; call serve_forever() to start."""
    return SimulatedProviderServer(host, port)


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down cleanly."""
    parser = argparse.ArgumentParser(description="Simulated OpenAI-compatible provider.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("SIM_LOG_LEVEL", "WARNING").upper())

    server = make_server(args.host, args.port)

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever(), which runs on this very thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        sys.stdout.write(f"simulated provider listening on {server.url}\n")
        sys.stdout.flush()
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
