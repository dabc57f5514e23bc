"""Settings of the Ringmaster service, read from the environment (RINGMASTER_*)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cohorts.assign import DEFAULT_MAX_MATERIALIZED_KEYS
from cohorts.db import database_url


class SettingsError(ValueError):
    """An environment variable holds something Ringmaster cannot use."""


def _positive_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    if not raw.strip().isdigit() or int(raw) <= 0:
        raise SettingsError(f"{name}={raw!r} is not a positive whole number; set e.g. {name}={default}")
    return int(raw)


def _kubeconfig() -> Path | None:
    raw = os.environ.get("RINGMASTER_KUBECONFIG") or os.environ.get("KUBECONFIG")
    return Path(raw).expanduser() if raw else None


@dataclass(frozen=True)
class ServiceSettings:
    database_url: str
    max_materialized_keys: int = DEFAULT_MAX_MATERIALIZED_KEYS
    # flagd's sync gRPC service: None serves none (`serve --sync-port 0`), 0 listens on any free port.
    sync_port: int | None = None
    sync_host: str = "127.0.0.1"
    # The rollout routes' Kubernetes; None: in-cluster, else the local control plane's, else none (503).
    kubeconfig: Path | None = None

    @classmethod
    def from_environment(cls) -> ServiceSettings:
        return cls(
            database_url=database_url(),
            max_materialized_keys=_positive_int("RINGMASTER_MAX_MATERIALIZED_KEYS", DEFAULT_MAX_MATERIALIZED_KEYS),
            kubeconfig=_kubeconfig(),
        )
