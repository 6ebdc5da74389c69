"""The API's gunicorn worker: gthread, with each request read by the event loop first.

Stock gthread hands a connection to a pool thread as soon as its first bytes arrive; a
client that then sends one header line every few seconds holds that thread as long as it
likes, and a few such clients stall the whole API (the reason nginx has
`client_header_timeout` and Go's server `ReadHeaderTimeout`). Here the main loop buffers
each request's head, and its body when the length is known and within the API's limit,
with non-blocking reads, and hands the connection to a thread only once the request is
complete: a slow client costs a socket and a buffer, never a thread. A request not
complete within `READ_TIMEOUT_SECONDS` gets a JSON 408 and is closed.

gunicorn's own error pages (414, 431, 400 ...) are HTML; `handle_error` answers with the
API's JSON error shape instead. Written against gunicorn's gthread internals
(`enqueue_req`, `murder_pending`, `TConn`); tests/api/test_gunicorn_worker_api.py runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import time
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.http import errors
from gunicorn.workers.gthread import ThreadWorker

from settings import get_settings

READ_TIMEOUT_SECONDS = float(os.environ.get("HTTP_READ_TIMEOUT_SECONDS") or 15)
RECV_BYTES = 64 * 1024
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d{1,12})[ \t]*\r\n", re.IGNORECASE)
_NO_BUFFERING = re.compile(rb"\r\n(transfer-encoding|expect):", re.IGNORECASE)
# (status, reason, code) per gunicorn parse error; anything else from the parser is a 400.
_CLIENT_ERRORS: tuple[tuple[type[Exception], int, str, str], ...] = (
    (errors.LimitRequestLine, 414, "URI Too Long", "uri_too_long"),
    (errors.LimitRequestHeaders, 431, "Request Header Fields Too Large", "headers_too_large"),
    (errors.ExpectationFailed, 417, "Expectation Failed", "expectation_failed"),
    (errors.UnsupportedTransferCoding, 501, "Not Implemented", "not_implemented"),
    (errors.ForbiddenProxyRequest, 403, "Forbidden", "forbidden"),
    (errors.ParseException, 400, "Bad Request", "bad_request"),
)


class _Pending:
    """A connection whose request is still arriving."""

    __slots__ = ("conn", "data", "deadline")

    def __init__(self, conn: Any, data: bytes) -> None:
        self.conn = conn
        self.data = bytearray(data)
        self.deadline = time.monotonic() + READ_TIMEOUT_SECONDS


class BufferingThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gthread whose pool threads only ever see complete requests."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reading: dict[Any, _Pending] = {}  # insertion order is deadline order
        line, fields, size = (
            self.cfg.limit_request_line or 8190,
            self.cfg.limit_request_fields or 100,
            self.cfg.limit_request_field_size or 8190,
        )
        # Past this with no end of head in sight, the parser will refuse it (414/431).
        self.max_head = line + fields * (size + 2) + 4
        self.max_body = get_settings().max_request_bytes

    def enqueue_req(self, conn: Any) -> None:
        """New, kept-alive and pipelining connections all come through here."""
        if self.cfg.is_ssl or getattr(conn, "request_buffered", False):
            super().enqueue_req(conn)
            return
        read_ahead = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        pending = _Pending(conn, read_ahead)
        if self._complete(pending.data):
            self._dispatch(pending)
            return
        conn.sock.setblocking(False)
        self.reading[conn] = pending
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, pending))

    def handle(self, conn: Any) -> Any:
        conn.request_buffered = False  # the next request on this connection is read anew
        return super().handle(conn)

    def murder_pending(self) -> None:
        """Every loop turn: close requests past their deadline (a JSON 408 if they
        started), and, once stopping, connections that have sent nothing."""
        super().murder_pending()
        now = time.monotonic()
        for pending in list(self.reading.values()):
            if pending.deadline <= now:
                if pending.data:
                    message = f"The request did not arrive within {READ_TIMEOUT_SECONDS:g} s."
                    _write_json(
                        pending.conn.sock, 408, "Request Timeout", "request_timeout", message
                    )
                self._drop(pending)
            elif not self.alive and not pending.data:
                self._drop(pending)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: Exception) -> None:
        """gunicorn's own refusals (malformed or oversized requests) as JSON."""
        for kind, status, reason, code in _CLIENT_ERRORS:
            if isinstance(exc, kind):
                ip = addr[0] if addr else "-"
                self.log.warning("Invalid request from ip=%s: %s %s", ip, status, exc)
                _write_json(client, status, reason, code, f"{reason}: {str(exc)[:200]}")
                return
        self.log.exception("Error handling request")
        message = "Something went wrong on our side."
        _write_json(client, 500, "Internal Server Error", "internal_error", message)

    def _on_readable(self, pending: _Pending, sock: Any) -> None:
        try:
            chunk = sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:  # the client went away
            self._drop(pending)
            return
        pending.data += chunk
        if self._complete(pending.data):
            self._forget(pending)
            self._dispatch(pending)

    def _complete(self, data: bytearray) -> bool:
        """The whole head is here, and the body too when its length is known and within
        the API's limit (a larger one is refused from its Content-Length alone)."""
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return len(data) > self.max_head
        head = bytes(data[: end + 2])
        length = _CONTENT_LENGTH.search(head)
        if length is None or _NO_BUFFERING.search(head):
            return True
        size = int(length.group(1))
        return size > self.max_body or len(data) >= end + 4 + size

    def _dispatch(self, pending: _Pending) -> None:
        conn = pending.conn
        conn.request_buffered = True
        conn.sock.setblocking(True)
        conn.init()  # the HTTP/1 parser: no I/O without TLS or h2c, both off here
        if pending.data:
            conn.parser.unreader.unread(bytes(pending.data))
        super().enqueue_req(conn)

    def _forget(self, pending: _Pending) -> None:
        self.reading.pop(pending.conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(pending.conn.sock)

    def _drop(self, pending: _Pending) -> None:
        self._forget(pending)
        self.nr_conns -= 1
        pending.conn.close()


def _write_json(sock: Any, status: int, reason: str, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with contextlib.suppress(Exception):
        util.write_nonblock(sock, head + body)
