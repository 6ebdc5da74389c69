"""Celery app, AI provider clients, the job runtime, the simulated provider."""
