"""`ringmaster controller` as separate processes, for the tests that kill, stop and replace them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

LEASE_NAME = "ringmaster-controller"


class ControllerProcess:
    def __init__(self, kubeconfig: Path, namespace: str, database_url: str, identity: str, log_dir: Path,
                 *, kill_after_writes: int | None = None, lease_duration_s: float = 3.0,
                 prometheus_url: str | None = None) -> None:
        self.identity = identity
        environment = {**os.environ, "RINGMASTER_DATABASE_URL": database_url}
        environment.pop("RINGMASTER_FAULT_KILL_AFTER_WRITES", None)
        if kill_after_writes is not None:
            environment["RINGMASTER_FAULT_KILL_AFTER_WRITES"] = str(kill_after_writes)
        if prometheus_url is not None:
            environment["RINGMASTER_PROMETHEUS_URL"] = prometheus_url
        self.log_path = log_dir / f"controller-{identity}-{os.urandom(3).hex()}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rollout", "controller", "--kubeconfig", str(kubeconfig), "--namespace", namespace,
             "--lease-namespace", namespace, "--identity", identity, "--no-install-crd",
             "--lease-duration", str(lease_duration_s), "--renew-deadline", str(lease_duration_s * 2 / 3),
             "--retry-period", "0.3", "--workers", "2", "--metrics-address", "127.0.0.1:0"],
            env=environment, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self._log.close()

    def terminate(self, timeout_s: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout_s)
        self._log.close()
        return code

    def wait(self, timeout_s: float) -> int:
        code = self.process.wait(timeout=timeout_s)
        self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def lease_holder(api_client: Any, namespace: str) -> str | None:
    try:
        lease = client.CoordinationV1Api(api_client).read_namespaced_lease(LEASE_NAME, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    holder: str | None = lease.spec.holder_identity
    return holder
