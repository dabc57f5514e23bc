"""The Rollout controller: observe → plan → act."""
