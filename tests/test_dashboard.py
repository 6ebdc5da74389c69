"""The Grafana dashboard only queries metrics the stack exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

import metrics  # noqa: F401 - defines every process metric on the default registry

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "aijobs.json"
METRIC = re.compile(r"\b(?:aijobs|celery)_[a-z0-9_]+\b|\bup\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported_names(client: Any) -> set[str]:
    names = {"up"}  # Prometheus's own per target
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    scraped = client.get("/metrics").get_data(as_text=True)
    names.update(s.name for f in text_string_to_metric_families(scraped) for s in f.samples)
    return names


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_every_query_names_an_exported_metric(client: Any) -> None:
    exported = exported_names(client)
    queries = dashboard_queries()
    assert len(queries) >= 20
    unknown = {name for query in queries for name in METRIC.findall(query)} - exported
    assert unknown == set()


def test_the_check_catches_a_misspelt_metric(client: Any) -> None:
    assert "aijobs_credit_held" not in exported_names(client)
    assert METRIC.findall("sum(rate(aijobs_credit_held[5m])) by (le)") == ["aijobs_credit_held"]
