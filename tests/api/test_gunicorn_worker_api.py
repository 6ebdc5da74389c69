"""The HTTP front for real: gunicorn with the repository's gunicorn.conf.py and worker
class, over loopback sockets. Slow clients cannot stall it, every refusal it makes on
its own is JSON, and keep-alive and pipelining still work."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ops.ports import free_port, wait_for_port
from ops.processes import stop_group
from ops.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
SLOW_HEADS = 40
SLOW_BODIES = 10
# The correctness bound of the acceptance: /healthz answers within this, however many
# slow clients are connected (a client timeout, not a benchmark).
ANSWER_WITHIN_SECONDS = 1.0


class Gunicorn:
    def __init__(self, tmp: Path, redis_url: str, **env: str) -> None:
        self.port = free_port()
        gunicorn = Path(sys.executable).parent / "gunicorn"
        self.process = subprocess.Popen(
            [
                str(gunicorn),
                "-c",
                "gunicorn.conf.py",
                "--bind",
                f"127.0.0.1:{self.port}",
                "api.app:create_app()",
            ],
            cwd=ROOT,
            env={
                **os.environ,
                "DATABASE_URL": f"sqlite:///{tmp / 'front.db'}",
                "REDIS_URL": redis_url,
                "CELERY_BROKER_URL": redis_url,
                **env,
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port("127.0.0.1", self.port, timeout=30)
        # The port opens before the workers have booted; the bound is for a running server.
        for _ in range(4):
            httpx.get(f"{self.url}/healthz", timeout=30, headers={"Connection": "close"})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def stop(self) -> None:
        stop_group(self.process)


@pytest.fixture(scope="module")
def front(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[Gunicorn]:
    server = Gunicorn(tmp_path_factory.mktemp("front"), redis_server.url)
    yield server
    server.stop()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(lines[0].split()[1]), headers, rest[:length]


def test_fifty_slow_clients_do_not_stall_healthz(front: Gunicorn) -> None:
    """40 clients send one header line every 2 s, 10 send a body a few bytes at a time,
    more clients than the config has threads (8, one worker on SQLite): /healthz keeps answering
    within a second, and the slow ones are still connected at the end."""
    slow: list[socket.socket] = []
    for n in range(SLOW_HEADS):
        sock = front.connect()
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: {n}\r\n".encode())
        slow.append(sock)
    body = json.dumps({"email": "slow@example.com", "password": "long enough"}).encode()
    for _ in range(SLOW_BODIES):
        sock = front.connect()
        sock.sendall(
            b"POST /v1/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:5]
        )
        slow.append(sock)
    stop = threading.Event()

    def drip() -> None:
        sent = 5
        while not stop.wait(2.0):
            for sock in slow[:SLOW_HEADS]:
                sock.sendall(b"X-More: 1\r\n")
            for sock in slow[SLOW_HEADS:]:
                sock.sendall(body[sent : sent + 1])
            sent += 1

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    answers = []
    try:
        with httpx.Client(base_url=front.url, timeout=ANSWER_WITHIN_SECONDS) as client:
            deadline = time.monotonic() + 7
            while time.monotonic() < deadline:
                answers.append(client.get("/healthz", headers={"Connection": "close"}).json())
                time.sleep(0.25)
        still_open = []
        for sock in slow:
            sock.setblocking(False)
            try:
                still_open.append(sock.recv(1) != b"")
            except BlockingIOError:
                still_open.append(True)
    finally:
        stop.set()
        dripper.join()
        for sock in slow:
            sock.close()

    assert len(answers) >= 20
    assert all(answer["status"] == "ok" for answer in answers), answers[-1]
    assert still_open == [True] * (SLOW_HEADS + SLOW_BODIES)


def test_oversized_and_malformed_requests_are_refused_in_json(front: Gunicorn) -> None:
    cases = [
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-H%d: 1\r\n" % n for n in range(60))
            + b"\r\n",
            431,
            "headers_too_large",
        ),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n", 431, None),
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "bad_request"),
    ]
    for raw, status, code in cases:
        with front.connect() as sock:
            sock.sendall(raw)
            answer, headers, body = read_response(sock)
        assert answer == status, body
        assert headers["content-type"] == "application/json"
        error = json.loads(body)["error"]
        assert error["message"]
        if code:
            assert error["code"] == code


def test_keep_alive_and_pipelined_requests_are_answered_in_order(front: Gunicorn) -> None:
    with front.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = read_response(sock)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/nothing HTTP/1.1\r\nHost: x")
        time.sleep(0.3)  # the second request's head arrives in two pieces
        sock.sendall(b"\r\n\r\n")
        second, third = read_response(sock), read_response(sock)

    assert (first[0], second[0]) == (200, 200)
    assert json.loads(second[2])["status"] == "ok"
    assert third[0] == 404
    assert json.loads(third[2])["error"]["code"] == "not_found"


def test_a_request_that_never_completes_gets_a_json_408(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    server = Gunicorn(
        tmp_path, redis_server.url, HTTP_READ_TIMEOUT_SECONDS="1", WEB_CONCURRENCY="1"
    )
    try:
        with server.connect() as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
            status, headers, body = read_response(sock)
            assert sock.recv(1) == b""  # then closed
        with server.connect() as idle:
            idle.settimeout(5)
            assert idle.recv(1) == b""  # nothing sent: closed without an answer
    finally:
        server.stop()

    assert status == 408
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "request_timeout"
