"""gunicorn settings for the API, used by `make run`, the Dockerfile and docker-compose
(`gunicorn -c gunicorn.conf.py --bind HOST:PORT 'api.app:create_app()'`).

Why each value (README "HTTP front"): threads because a request mostly waits on the
database or Redis; the worker class reads every request in the event loop before a
thread sees it, so slow clients cannot hold threads; the limits bound what one request
may make us buffer. Env vars override the sizes.
"""

import os

worker_class = "api.gunicorn_worker.BufferingThreadWorker"


# One process per core (2 here), SQLite or PostgreSQL: the GIL is per process, and
# SQLite writers of all processes queue on one lock that wakes the next at once
# (models/sqlite.py). On SQLite, before that lock, one process did better: a writer of
# another process slept up to 100 ms per try. Figures: README "The HTTP front".
workers = int(os.environ.get("WEB_CONCURRENCY") or 2)
threads = int(os.environ.get("GUNICORN_THREADS") or 8)
# Open connections per worker (slow, kept-alive or in flight) before it stops accepting:
# bounds the memory slow clients can make us buffer (head + body limits, below).
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS") or 250)
# gthread's main loop heartbeats whatever its threads do; a worker silent this long is
# wedged and is restarted. Requests themselves are bounded by their own timeouts.
timeout = 30
# SIGTERM: finish in-flight requests for up to this long (make run's grace is longer).
graceful_timeout = 25
keepalive = 5
# A request line (method, path, query) of at most 4 KiB, 50 headers of at most 8 KiB:
# beyond them, 414 / 431 as JSON (api/gunicorn_worker.py).
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190
http_protocols = "h1"
accesslog = "-"


def child_exit(_server: object, worker: object) -> None:
    """A dead worker's samples leave the live totals (PROMETHEUS_MULTIPROC_DIR)."""
    import metrics

    metrics.mark_process_dead(worker.pid)  # type: ignore[attr-defined]


# No `gunicornc` control socket: it would live in $HOME, shared by every copy running.
control_socket_disable = True
