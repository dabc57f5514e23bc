"""`ringmaster up`: the whole system on one machine, in the data folder, on embedded defaults.

It starts, in order: the local control plane (built on first use) with its Prometheus, the SQLite
database (migrated), `ringmaster serve`, `ringmaster controller`, and the sample application `web`
(examples/statefulset.yaml) whose simulated pods serve traffic that Prometheus scrapes. Everything
it started, and only that, is stopped again in reverse order: a control plane that was already
running is left running, as `ringmaster localcluster up` left it.

Servers run as child processes in sessions of their own, so Ctrl-C in the terminal reaches only this
process, which then stops them in order: the controller first (it releases its Lease), then the API.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import yaml
from kubernetes import client, dynamic
from kubernetes.client.exceptions import ApiException
from rich.console import Console

from cohorts.db import DATA_DIR_ENV, DATABASE_URL_ENV, make_engine, upgrade
from rollout.auth.tokens import TokenStore
from rollout.controller.crd import install_crd
from rollout.localcluster.build import build_control_plane, ensure_etcd
from rollout.localcluster.cluster import LocalCluster
from rollout.localcluster.errors import LocalClusterError
from rollout.localcluster.prometheus import free_port, port_is_free

REPOSITORY = Path(__file__).resolve().parents[1]
EXAMPLES = REPOSITORY / "examples"
SAMPLE_APPLICATION = EXAMPLES / "statefulset.yaml"
FIELD_MANAGER = "ringmaster-up"
LEASE_NAME = "ringmaster-controller"
STOP_TIMEOUT_S = 20.0
START_TIMEOUT_S = 60.0


class UpError(RuntimeError):
    """Something `ringmaster up` needs could not be started; the message says what and where its log is."""


@dataclass(frozen=True)
class UpSettings:
    data_dir: Path
    port: int = 8080
    sync_port: int = 8015
    controller_metrics_port: int = 8090
    host: str = "127.0.0.1"
    sample: bool = True
    environment: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


class LocalSystem:
    """What `ringmaster up` starts, as a context manager: entered, everything runs; left, what it
    started is stopped."""

    def __init__(self, settings: UpSettings, console: Console) -> None:
        self.settings = settings
        self.console = console
        self.data_dir = settings.data_dir.resolve()
        self.logs = self.data_dir / "logs"
        self.cluster = LocalCluster(self.data_dir / "localcluster")
        self.started_cluster = False
        self.children: list[Child] = []
        self.server_url = f"http://{settings.host}:{settings.port}"
        self.token = ""
        self.prometheus_url: str | None = None
        self.controller_identity = f"ringmaster-up-{os.getpid()}"
        # The embedded default is SQLite in the data folder; a RINGMASTER_DATABASE_URL set by hand wins.
        self.database_url = (settings.environment.get(DATABASE_URL_ENV) or os.environ.get(DATABASE_URL_ENV)
                             or f"sqlite:///{self.data_dir / 'ringmaster.db'}")
        self._api_client: client.ApiClient | None = None

    # Entering and leaving

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    @property
    def dashboard_url(self) -> str:
        return f"{self.server_url}/dashboard"

    @property
    def kubeconfig(self) -> Path:
        return self.cluster.kubeconfig

    @property
    def api_client(self) -> client.ApiClient:
        if self._api_client is None:
            self._api_client = self.cluster.api_client()
        return self._api_client

    def environment(self) -> dict[str, str]:
        """The variables every ringmaster command needs to reach this system."""
        return {DATA_DIR_ENV: str(self.data_dir), DATABASE_URL_ENV: self.database_url,
                "RINGMASTER_KUBECONFIG": str(self.kubeconfig),
                "KUBECONFIG": str(self.kubeconfig), "RINGMASTER_SERVER": self.server_url,
                **({"RINGMASTER_PROMETHEUS_URL": self.prometheus_url} if self.prometheus_url else {})}

    def start(self) -> None:
        self._check_ports()
        self.logs.mkdir(parents=True, exist_ok=True)
        self._step("the database", self._migrate)
        # Installing and building draw their own progress, outside a step's spinner.
        ensure_etcd(self.console)
        build_control_plane(self.console)
        self._step("the local control plane and Prometheus", self._start_cluster)
        self._step("the Rollout and SLOGate CRDs", lambda: install_crd(self.api_client))
        self._step(f"ringmaster serve on {self.server_url}", self._start_server)
        self._step("ringmaster controller", self._start_controller)
        if self.settings.sample:
            self._step("the sample application web (examples/statefulset.yaml)", self._start_sample)

    def stop(self) -> list[str]:
        """Stop what this system started, newest first; returns what was stopped."""
        stopped: list[str] = []
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
                try:
                    child.process.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait()
                stopped.append(child.name)
        self.children.clear()
        if self._api_client is not None:
            self._api_client.close()
            self._api_client = None
        if self.started_cluster:
            stopped.extend(self.cluster.down())
            self.started_cluster = False
        return stopped

    # The steps

    def _step(self, what: str, start: Any) -> None:
        started = time.monotonic()
        with self.console.status(f"starting {what}"):
            start()
        self.console.print(f"[green]✔[/] {what} [dim]({time.monotonic() - started:.1f} s)[/]", highlight=False)

    def _check_ports(self) -> None:
        wanted = {"--port": self.settings.port, "--sync-port": self.settings.sync_port,
                  "--controller-metrics-port": self.settings.controller_metrics_port}
        taken = [f"{option} {port}" for option, port in wanted.items() if port and not port_is_free(port)]
        if taken:
            raise UpError(f"port(s) in use: {', '.join(taken)}; is another `ringmaster up` or `serve` running? "
                          "Stop it, or choose other ports with those options")

    def _migrate(self) -> None:
        upgrade(self.database_url)
        engine = make_engine(self.database_url)
        try:
            name = f"up-{datetime.now(UTC):%Y%m%d-%H%M%S}-{os.getpid()}"
            _, self.token = TokenStore(engine).create(name, "admin", created_by="ringmaster up")
        finally:
            engine.dispose()

    def _start_cluster(self) -> None:
        self.started_cluster = not self.cluster.status().api_ready
        status = self.cluster.up()
        self.prometheus_url = status.prometheus_url

    def _start_server(self) -> None:
        command = ["serve", "--host", self.settings.host, "--port", str(self.settings.port),
                   "--sync-port", str(self.settings.sync_port)]
        self._spawn("serve", command)
        self._wait(lambda: _answers(f"{self.server_url}/readyz"), "serve")

    def _start_controller(self) -> None:
        command = ["controller", "--kubeconfig", str(self.kubeconfig), "--identity", self.controller_identity,
                   "--lease-name", LEASE_NAME, "--retry-period", "0.5", "--lease-duration", "5",
                   "--renew-deadline", "4",
                   "--metrics-address", f"{self.settings.host}:{self.settings.controller_metrics_port}"]
        if self.prometheus_url:
            command += ["--prometheus-url", self.prometheus_url]
        self._spawn("controller", command)
        # The controller is of use once it leads: a Lease left by an earlier run expires first.
        coordination = client.CoordinationV1Api(self.api_client)

        def leads() -> bool:
            try:
                lease = coordination.read_namespaced_lease(LEASE_NAME, "default", _request_timeout=5)
            except ApiException:
                return False
            return bool(lease.spec and lease.spec.holder_identity == self.controller_identity)

        self._wait(leads, "controller")

    def _start_sample(self) -> None:
        apply_manifests(self.api_client, load_manifests(SAMPLE_APPLICATION), namespace="default")
        apps = client.AppsV1Api(self.api_client)

        def ready() -> bool:
            found = apps.read_namespaced_stateful_set("web", "default", _request_timeout=5)
            return (found.status.ready_replicas or 0) >= (found.spec.replicas or 0)

        self._wait(ready, "the sample application")

    # Processes

    def _spawn(self, name: str, arguments: list[str]) -> None:
        log = self.logs / f"{name}.log"
        environment = {**os.environ, **self.environment(), **self.settings.environment}
        with log.open("ab") as output:
            process = subprocess.Popen([sys.executable, "-m", "rollout", *arguments], stdout=output,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environment,
                                       start_new_session=True)
        self.children.append(Child(name, process, log))

    def _wait(self, ready: Any, name: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        child = next((child for child in self.children if child.name == name), None)
        while not ready():
            if child is not None and child.process.poll() is not None:
                raise UpError(f"{name} exited with status {child.process.returncode}; see {child.log}")
            if time.monotonic() > deadline:
                where = f"; see {child.log}" if child else ""
                raise UpError(f"{name} was not ready within {START_TIMEOUT_S:.0f} s{where}")
            time.sleep(0.2)

    def dead_children(self) -> list[Child]:
        return [child for child in self.children if child.process.poll() is not None]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def load_manifests(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def apply_manifests(api_client: client.ApiClient, manifests: list[dict[str, Any]], *, namespace: str) -> None:
    """Create each object, or, when it exists, merge-patch it to the manifest's values (lists are replaced
    whole). Kubernetes 1.20's server-side apply refuses ports without an explicit protocol, hence no SSA."""
    resources = dynamic.DynamicClient(api_client).resources
    for manifest in manifests:
        kind = resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
        metadata = manifest.setdefault("metadata", {})
        where = {"namespace": metadata.setdefault("namespace", namespace)} if kind.namespaced else {}
        try:
            kind.create(body=manifest, field_manager=FIELD_MANAGER, **where)
        except ApiException as error:
            if error.status != 409:
                raise
            kind.patch(body=manifest, name=metadata["name"], content_type="application/merge-patch+json",
                       field_manager=FIELD_MANAGER, **where)


def choose_port(preferred: int) -> int:
    return preferred if port_is_free(preferred) else free_port()


def print_summary(system: LocalSystem, console: Console) -> None:
    rows = [("dashboard", system.dashboard_url), ("API", f"{system.server_url}  (/docs for its reference)"),
            ("Prometheus", system.prometheus_url or "not running"), ("kubeconfig", str(system.kubeconfig)),
            ("logs", str(system.logs)), ("admin token", system.token)]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        console.print(f"  [bold]{label:<{width}}[/]  {value}", highlight=False, soft_wrap=True)
    console.print("\n  in another terminal:", highlight=False)
    for name, value in system.environment().items():
        console.print(f"    export {name}={value}", highlight=False, soft_wrap=True)
    console.print(f"    export RINGMASTER_TOKEN={system.token}", highlight=False, soft_wrap=True)


def run_until_interrupted(system: LocalSystem, console: Console) -> int:
    """Wait for Ctrl-C (or SIGTERM); a child that dies on its own ends the wait with status 1."""
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _: stopping.append(signum))
    try:
        while not stopping:
            dead = system.dead_children()
            if dead:
                for child in dead:
                    console.print(f"[red]{child.name} exited with status {child.process.returncode}; see "
                                  f"{child.log}[/]", highlight=False)
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    return 0


def failure_text(error: Exception) -> str:
    if isinstance(error, LocalClusterError | UpError):
        return str(error)
    if isinstance(error, ApiException):
        try:
            message = json.loads(error.body)["message"]
        except (TypeError, ValueError, KeyError):
            message = error.body
        return f"the Kubernetes API server answered {error.status} {error.reason}: {message}"
    return f"{type(error).__name__}: {error}"
