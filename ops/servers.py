"""What the throwaway servers (Redis, PostgreSQL) share: a temp dir, a free port with
retries, and an idempotent stop that also runs at exit and at the end of a `with`."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from ops.ports import free_port

HOST = "127.0.0.1"


class ThrowawayServer:
    """Subclasses implement `start` and `_shutdown` (stop the process, keep the files)."""

    def __init__(self, port: int | None) -> None:
        self._requested_port = port
        self.port: int = port or 0
        self.tmpdir: Path | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def _shutdown(self) -> None:
        raise NotImplementedError

    def _make_tmpdir(self, prefix: str) -> Path:
        self.tmpdir = Path(tempfile.mkdtemp(prefix=prefix))
        atexit.register(self.stop)
        return self.tmpdir

    def _launch_on_free_port(self, launch: Callable[[], None], undo: Callable[[], None]) -> None:
        """`launch` on the requested port, or on up to three free ones (another process
        may take a free port between our pick and the server's bind)."""
        attempts = 1 if self._requested_port else 3
        for attempt in range(attempts):
            self.port = self._requested_port or free_port(HOST)
            try:
                launch()
                return
            except RuntimeError:
                undo()
                if attempt == attempts - 1:
                    raise

    def stop(self) -> None:
        """Idempotent: safe from atexit, a fixture finalizer and a `with` block alike."""
        self._shutdown()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
        atexit.unregister(self.stop)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
