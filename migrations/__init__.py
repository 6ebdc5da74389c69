"""Alembic migrations (one per schema change)."""
