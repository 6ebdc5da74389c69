"""Image generation: `count` images for a prompt, charged per image returned."""

from __future__ import annotations

from dataclasses import dataclass

from billing.pricing import Usage
from billing.runs import JobRun, Outcome
from models import Image
from workers import provider
from workers.celery_app import celery
from workers.inflight import Flight
from workers.runtime import JobTask, artifact_fields


@dataclass(frozen=True)
class ImageHandler:
    def execute(self, run: JobRun, flight: Flight) -> Outcome:
        prompt = run.input["prompt"]
        urls = provider.generate_images(run.provider_model, prompt, run.input["count"], flight)
        images = [
            Image(url=url, prompt=prompt, model=run.model, **artifact_fields(run)) for url in urls
        ]
        result = {"images": [{"url": url} for url in urls]}
        return Outcome(Usage(images=len(urls)), result, list(images))


HANDLER = ImageHandler()


@celery.task(base=JobTask, bind=True, name="tasks.image_generation")
def image_generation(self: JobTask, job_id: str) -> str:
    return self.run_job(job_id, HANDLER)
