"""Image prompt extraction: image-generation prompts drawn from a text."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from billing.runs import JobRun
from models import Base, ImagePrompt
from workers.celery_app import celery
from workers.runtime import JobTask, OutputError, TextHandler, artifact_fields

SYSTEM_PROMPT = """You are an art director. Read the text and write exactly `count` vivid, \
self-contained prompts for an image generator that would illustrate it (subject, setting, \
style, lighting; no text in the image).
Answer with JSON only: {"prompts": ["...", ...]}
OPERATION: image_prompt_extraction"""


class ImagePromptExtractionOutput(BaseModel):
    prompts: list[str] = Field(min_length=1)


def parse(output: ImagePromptExtractionOutput, run: JobRun) -> tuple[dict[str, Any], list[Base]]:
    count = run.input["count"]
    prompts = [p.strip() for p in output.prompts if p.strip()][:count]
    if len(prompts) < count:
        raise OutputError(f"Asked for {count} prompts, the model gave {len(prompts)}.")
    artifacts: list[Base] = [ImagePrompt(prompt=p, **artifact_fields(run)) for p in prompts]
    return {"prompts": prompts}, artifacts


HANDLER = TextHandler(SYSTEM_PROMPT, ImagePromptExtractionOutput, parse)


@celery.task(base=JobTask, bind=True, name="tasks.image_prompt_extraction")
def image_prompt_extraction(self: JobTask, job_id: str) -> str:
    return self.run_job(job_id, HANDLER)
