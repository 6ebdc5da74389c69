"""Image generation: `count` images for a prompt, charged per image returned."""

from __future__ import annotations

from dataclasses import dataclass

from billing.pricing import Usage
from billing.runs import JobRun
from models import Image
from workers import provider
from workers.celery_app import celery
from workers.runtime import HandlerResult, JobTask, artifact_fields


@dataclass(frozen=True)
class ImageHandler:
    def execute(self, run: JobRun) -> HandlerResult:
        prompt = run.input["prompt"]
        urls = provider.generate_images(run.provider_model, prompt, run.input["count"])
        images = [
            Image(url=url, prompt=prompt, model=run.model, **artifact_fields(run)) for url in urls
        ]
        return HandlerResult(
            Usage(images=len(urls)), {"images": [{"url": u} for u in urls]}, list(images)
        )


HANDLER = ImageHandler()


@celery.task(base=JobTask, bind=True, name="tasks.image_generation")
def image_generation(self: JobTask, job_id: str) -> str:
    return self.run_job(job_id, HANDLER)
