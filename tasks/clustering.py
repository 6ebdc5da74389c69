"""Keyword clustering: group keywords into topical clusters."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from billing.runs import JobRun
from models import Base, Cluster
from workers.celery_app import celery
from workers.runtime import JobTask, OutputError, TextHandler, artifact_fields

SYSTEM_PROMPT = """You are an SEO strategist. Group the given keywords into topical clusters \
that a single article could target. Every input keyword must appear in exactly one cluster, \
spelled exactly as given. Name each cluster with a short descriptive topic.
Answer with JSON only: {"clusters": [{"name": "<topic>", "keywords": ["<keyword>", ...]}]}
OPERATION: clustering"""


class ClusterOut(BaseModel):
    name: str = Field(min_length=1)
    keywords: list[str] = Field(min_length=1)


class ClusteringOutput(BaseModel):
    clusters: list[ClusterOut] = Field(min_length=1)


def parse(output: ClusteringOutput, run: JobRun) -> tuple[dict[str, Any], list[Base]]:
    asked = set(run.input["keywords"])
    clustered = [kw for cluster in output.clusters for kw in cluster.keywords]
    unknown = set(clustered) - asked
    if unknown:
        raise OutputError(f"The model invented keywords: {sorted(unknown)[:5]}")
    clusters = [c.model_dump() for c in output.clusters]
    artifacts: list[Base] = [
        Cluster(name=c["name"], keywords=c["keywords"], **artifact_fields(run)) for c in clusters
    ]
    return {"clusters": clusters}, artifacts


HANDLER = TextHandler(SYSTEM_PROMPT, ClusteringOutput, parse)


@celery.task(base=JobTask, bind=True, name="tasks.clustering")
def clustering(self: JobTask, job_id: str) -> str:
    return self.run_job(job_id, HANDLER)
