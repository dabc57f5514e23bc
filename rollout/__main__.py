"""`python -m rollout` runs the `ringmaster` command."""

from rollout.cli import app

app(prog_name="ringmaster")
