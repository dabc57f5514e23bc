"""Alembic's environment and revisions for the Ringmaster database; `cohorts.db` drives them."""
