"""Entry point for `multiprocessing` "spawn" children in test_periodic: run one periodic
job at the same moment as a sibling process (a barrier lines them up)."""

from __future__ import annotations

import os
import traceback
from datetime import datetime
from typing import Any


def run_periodic_in_process(
    env: dict[str, str], job: str, now: str, barrier: Any, results: Any
) -> None:
    os.environ.update(env)
    from settings import reload_settings

    reload_settings()
    from models.db import dispose_engines
    from tasks.periodic import run_periodic

    try:
        barrier.wait(60)
        results.put(run_periodic(job, datetime.fromisoformat(now)))
    except Exception:
        results.put("error: " + traceback.format_exc())
    finally:
        dispose_engines()
