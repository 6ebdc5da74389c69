"""Celery tasks: one module per AI operation, plus periodic work."""
