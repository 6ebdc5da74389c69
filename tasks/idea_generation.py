"""Idea generation: article ideas for one keyword cluster."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from billing.runs import JobRun
from models import Base, Idea
from workers.celery_app import celery
from workers.runtime import JobTask, OutputError, TextHandler, artifact_fields

SYSTEM_PROMPT = """You are a content strategist. Propose exactly `count` article ideas for the \
given keyword cluster. Each idea has a compelling title, a one-paragraph description, a \
content_type (article, guide or listicle) and the target_keywords it covers.
Answer with JSON only: {"ideas": [{"title": "...", "description": "...", \
"content_type": "article", "target_keywords": ["..."]}]}
OPERATION: idea_generation"""


class IdeaOut(BaseModel):
    title: str = Field(min_length=1)
    description: str = ""
    content_type: str = "article"
    target_keywords: list[str] = Field(default_factory=list)


class IdeaGenerationOutput(BaseModel):
    ideas: list[IdeaOut] = Field(min_length=1)


def parse(output: IdeaGenerationOutput, run: JobRun) -> tuple[dict[str, Any], list[Base]]:
    count = run.input["count"]
    if len(output.ideas) < count:
        raise OutputError(f"Asked for {count} ideas, the model gave {len(output.ideas)}.")
    ideas = [idea.model_dump() for idea in output.ideas[:count]]
    cluster_name = run.input["cluster"]["name"]
    artifacts: list[Base] = [
        Idea(
            title=i["title"],
            description=i["description"],
            content_type=i["content_type"],
            cluster_name=cluster_name,
            **artifact_fields(run),
        )
        for i in ideas
    ]
    return {"ideas": ideas}, artifacts


HANDLER = TextHandler(SYSTEM_PROMPT, IdeaGenerationOutput, parse)


@celery.task(base=JobTask, bind=True, name="tasks.idea_generation")
def idea_generation(self: JobTask, job_id: str) -> str:
    return self.run_job(job_id, HANDLER)
