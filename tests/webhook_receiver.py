"""A real webhook receiver for tests: an HTTP server on 127.0.0.1 in a thread that
records every request (and every TCP connection) and answers from a script."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def verify(self, secret: str) -> Any:
        """The independent Standard Webhooks verifier (the `standardwebhooks` package)."""
        return Webhook(secret).verify(self.body, self.headers)


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body: bytes = b"ok"
    # Seconds between bytes: the answer trickles in, each read short, the whole slow.
    trickle: float = 0.0
    # With `trickle`: the status line and headers come at once, only the body trickles.
    headers_first: bool = False


class Receiver:
    def __init__(self, *replies: int | Reply) -> None:
        """Answer the n-th request with the n-th reply, then 200 for ever after."""
        self.script = [r if isinstance(r, Reply) else Reply(r) for r in replies]
        self.requests: list[Received] = []
        self.connections = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    reply = receiver.script.pop(0) if receiver.script else Reply()
                if reply.delay:
                    time.sleep(reply.delay)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(reply.body)))
                if not reply.trickle:
                    self.end_headers()
                    self.wfile.write(reply.body)
                    return
                head = b"".join(self._headers_buffer) + b"\r\n"
                self._headers_buffer = []
                if reply.headers_first:
                    self.wfile.write(head)
                    head = b""
                for byte in head + reply.body:
                    time.sleep(reply.trickle)
                    self.wfile.write(bytes([byte]))

            def log_message(self, *_: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, *_: Any) -> None:
                pass  # a client that timed out and hung up is what some tests want

            def get_request(self) -> Any:
                accepted = super().get_request()
                with receiver._lock:
                    receiver.connections += 1
                return accepted

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, count: int, timeout: float = 20) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.requests)} of {count} webhooks after {timeout}s")
            time.sleep(0.02)
        return list(self.requests)
