"""The jobs this worker process is running, and the one thread that heart-beats them.

A running job proves it is alive through `jobs.heartbeat_at`: one background thread per
process updates every job in flight here in one statement every
HEARTBEAT_INTERVAL_SECONDS (not a thread or a statement per job). The reconciler re-runs
a job whose heartbeat is older than HEARTBEAT_STALE_SECONDS, and a duplicate message
for a job with a fresh heartbeat is skipped. The same statement reports jobs whose
cancel was requested, so a thread waiting on the rate limiter or between retries wakes
up and stops at its next safe point.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from billing import runs
from models import utcnow
from models.db import session_factory, transaction
from settings import get_settings

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    """The account cancelled the job (or it ended elsewhere): stop at this safe point."""


class Flight:
    """One job in flight in this process: its cancel signal and safe-point check."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.stop = threading.Event()

    def check(self) -> None:
        """A safe point (before each provider attempt): raise JobCancelled if the
        account cancelled the job. Reads the database, so a cancel is seen at once; if
        the database cannot answer, the run goes on (the answer's settle decides)."""
        if not self.stop.is_set():
            try:
                with session_factory(read_only=True)() as session:
                    if runs.should_stop(session, self.job_id):
                        self.stop.set()
            except Exception:
                log.warning("job %s: cancel check failed; going on", self.job_id, exc_info=True)
        if self.stop.is_set():
            raise JobCancelled(self.job_id)

    def sleep(self, seconds: float) -> None:
        """Wait, waking early if the job is cancelled; then check."""
        self.stop.wait(max(seconds, 0.0))
        self.check()


class _Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, Flight] = {}
        self._thread: threading.Thread | None = None
        self._pid = 0

    @contextmanager
    def flying(self, job_id: str) -> Iterator[Flight]:
        flight = Flight(job_id)
        with self._lock:
            self._flights[job_id] = flight
            self._ensure_thread()
        try:
            yield flight
        finally:
            with self._lock:
                if self._flights.get(job_id) is flight:
                    del self._flights[job_id]

    def _ensure_thread(self) -> None:
        """Started on first use in each process (after a fork, the parent's is gone)."""
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._beat, name="job-heartbeat", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        interval = get_settings().heartbeat_interval_seconds
        while True:
            threading.Event().wait(interval)
            with self._lock:
                flights = dict(self._flights)
            if flights:
                self.beat_once(flights)

    def beat_once(self, flights: dict[str, Flight]) -> None:
        try:
            with transaction() as session:
                stopped = runs.record_heartbeats(session, list(flights), utcnow())
        except Exception:
            # The database is locked or down: the jobs go on; a long outage makes them
            # look dead and the reconciler re-runs them (the settle gate keeps one charge).
            log.warning("heartbeat of %d job(s) failed", len(flights), exc_info=True)
            return
        for job_id in stopped:
            flights[job_id].stop.set()

    def job_ids(self) -> list[str]:
        with self._lock:
            return list(self._flights)


registry = _Registry()
flying = registry.flying
