"""Content generation: a full article for a title."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from billing.runs import JobRun
from models import Base, Content
from workers.celery_app import celery
from workers.runtime import JobTask, TextHandler, artifact_fields

SYSTEM_PROMPT = """You are an expert SEO writer. Write a complete, well-structured article for \
the given title of about `word_count` words, naturally using the given keywords. Separate \
paragraphs with a blank line.
Answer with JSON only: {"title": "...", "body": "..."}
OPERATION: content_generation"""


class ContentGenerationOutput(BaseModel):
    title: str = Field(min_length=1)
    body: str = Field(min_length=1)


def parse(output: ContentGenerationOutput, run: JobRun) -> tuple[dict[str, Any], list[Base]]:
    word_count = len(output.body.split())
    content = {"title": output.title, "body": output.body, "word_count": word_count}
    artifact = Content(
        title=output.title, body=output.body, word_count=word_count, **artifact_fields(run)
    )
    return {"content": content}, [artifact]


HANDLER = TextHandler(SYSTEM_PROMPT, ContentGenerationOutput, parse)


@celery.task(base=JobTask, bind=True, name="tasks.content_generation")
def content_generation(self: JobTask, job_id: str) -> str:
    return self.run_job(job_id, HANDLER)
