"""Rollouts: the API service and the CLI today; the controller and the local control plane later."""
