"""A throwaway Prometheus server (Debian's `prometheus` package) for the metrics tests:
it scrapes the given targets every second and answers PromQL on its HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Self

import httpx

from ops.processes import stop_group
from ops.servers import HOST, ThrowawayServer

INSTALL_HINT = "prometheus was not found; install it with `apt-get install -y prometheus`"


def find_prometheus() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError(INSTALL_HINT)
    return binary


class PrometheusServer(ThrowawayServer):
    def __init__(self, targets: dict[str, str], port: int | None = None) -> None:
        """`targets`: job name -> host:port (each serving `/metrics`)."""
        super().__init__(port)
        self.targets = targets
        self.executable = find_prometheus()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _config(self) -> str:
        jobs = [
            {
                "job_name": name,
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "static_configs": [{"targets": [target]}],
            }
            for name, target in self.targets.items()
        ]
        return json.dumps({"global": {"scrape_interval": "1s"}, "scrape_configs": jobs})

    def start(self) -> Self:
        tmp = self._make_tmpdir("aijobs-prometheus-")
        (tmp / "prometheus.yml").write_text(self._config())  # JSON is YAML
        try:
            self._launch_on_free_port(lambda: self._launch(tmp), self._shutdown)
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, tmp: Path) -> None:
        log = (tmp / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                self.executable,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address={HOST}:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1, trust_env=False).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("prometheus did not become ready within 30 s")

    def _shutdown(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_group(proc, timeout=10)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        response = httpx.get(
            f"{self.url}/api/v1/query", params={"query": promql}, timeout=5, trust_env=False
        )
        body = response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result
