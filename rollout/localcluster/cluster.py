"""The local control plane on loopback: etcd, a real kube-apiserver and kube-controller-manager
(v1.20.2, built from Debian's source package by scripts/build-kube), the node simulator, and
Debian's Prometheus scraping the simulated application.

Everything lives in one folder (`<data dir>/localcluster` by default): credentials, etcd's data,
logs, the kubeconfig, Prometheus's config, targets file and data, and `state.json`, which records the
PID and start time of every process `up` started, so `down` stops exactly those and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from cohorts.db import data_dir
from rollout.localcluster.errors import LocalClusterError as LocalClusterError  # where callers import it from
from rollout.localcluster.pki import Credentials, ensure_credentials
from rollout.localcluster.prometheus import (
    free_port,
    install_prometheus,
    is_ready,
    log_tail,
    port_is_free,
    prometheus_command,
    write_config,
)

KUBE_VERSION = "1.20.2"
CONTROLLERS = "statefulset,garbagecollector,namespace"
STOP_ORDER = ("prometheus", "simulator", "kube-controller-manager", "kube-apiserver", "etcd")
# The API server's audit log: who asked for what, at Metadata level (no bodies), so tests can compare the
# calls a process makes with the RBAC it is granted. Health checks and discovery are left out.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
    "rules": [{"level": "None", "nonResourceURLs": ["*"]}, {"level": "Metadata"}],
}
AUDIT_LOG_MAX_MB = 50  # then rotated, keeping one older file: at most 100 MB on disk


def kube_bin_dir() -> Path:
    cache = os.environ.get("RINGMASTER_KUBE_CACHE")
    base = Path(cache) if cache else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ringmaster" / (
        f"kube-{KUBE_VERSION}"
    )
    return base / "bin"


def default_root() -> Path:
    return data_dir() / "localcluster"


def _process_start_ticks(pid: int) -> int | None:
    """The start time, in clock ticks since boot, of a live process (which tells a PID from a reused
    one); None when there is no such process or it has exited and awaits reaping."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; the fields after its last ')' are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


@dataclass
class ProcessRecord:
    pid: int
    start_ticks: int
    log: str

    def alive(self) -> bool:
        return _process_start_ticks(self.pid) == self.start_ticks


@dataclass
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    metrics: int
    prometheus: int = 0  # 0 in a state.json written before the cluster ran Prometheus

    @classmethod
    def choose(cls, previous: Ports | None) -> Ports:
        """The ports used last time when they are still free (etcd remembers its peer URL), else new ones."""
        if previous is not None and all(port_is_free(port) for port in asdict(previous).values()):
            return previous if previous.prometheus else replace(previous, prometheus=free_port())
        return cls(free_port(), free_port(), free_port(), free_port(), free_port())


@dataclass
class ClusterState:
    ports: Ports
    processes: dict[str, ProcessRecord] = field(default_factory=dict)
    started_at: float = 0.0

    @classmethod
    def load(cls, path: Path) -> ClusterState | None:
        try:
            raw: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return cls(
            ports=Ports(**raw["ports"]),
            processes={name: ProcessRecord(**record) for name, record in raw.get("processes", {}).items()},
            started_at=raw.get("started_at", 0.0),
        )

    def save(self, path: Path) -> None:
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(self), indent=2))
        temporary.replace(path)


@dataclass(frozen=True)
class ClusterStatus:
    root: Path
    kubeconfig: Path
    apiserver_url: str
    metrics_url: str
    prometheus_url: str  # "" when the cluster runs no Prometheus
    running: dict[str, int]
    stopped: list[str]
    api_ready: bool


class LocalCluster:
    def __init__(self, root: Path | None = None, bin_dir: Path | None = None) -> None:
        self.root = (root or default_root()).resolve()
        self.bin_dir = bin_dir or kube_bin_dir()
        self.kubeconfig = self.root / "kubeconfig"
        self.targets_file = self.root / "prometheus" / "targets.json"
        self.prometheus_config = self.root / "prometheus" / "prometheus.yml"
        self.prometheus_data = self.root / "prometheus" / "data"
        self.state_file = self.root / "state.json"
        self.logs = self.root / "logs"
        self.audit_policy = self.root / "audit-policy.yaml"
        self.audit_log = self.logs / "audit.log"

    # Public operations

    def up(self, *, simulator: bool = True, prometheus: bool = True, timeout_s: float = 60.0) -> ClusterStatus:
        """Start what is not running and wait until the API answers; a running cluster is left as it is.
        Prometheus, installed first when it is missing, scrapes the simulator's pods."""
        self._check_binaries()
        if prometheus:
            install_prometheus()
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.targets_file.parent.mkdir(exist_ok=True)
        state = ClusterState.load(self.state_file)
        if state is not None and all(record.alive() for record in state.processes.values()) and state.processes:
            skipped = {name for name, wanted in (("simulator", simulator), ("prometheus", prometheus)) if not wanted}
            if set(STOP_ORDER) - skipped <= set(state.processes):
                return self.status()
        if state is not None:
            self._stop(state)  # a partly running cluster is restarted whole
        state = ClusterState(ports=Ports.choose(state.ports if state else None), started_at=time.time())
        credentials = ensure_credentials(self.root / "pki")
        self._write_kubeconfig(state.ports, credentials)
        self.audit_policy.write_text(yaml.safe_dump(AUDIT_POLICY, sort_keys=False))
        deadline = time.monotonic() + timeout_s
        try:
            state.processes["etcd"] = self._start("etcd", self._etcd_command(state.ports))
            state.save(self.state_file)
            self._wait(lambda: self._etcd_healthy(state.ports), deadline, "etcd", state)
            state.processes["kube-apiserver"] = self._start(
                "kube-apiserver", self._apiserver_command(state.ports, credentials)
            )
            state.save(self.state_file)
            self._wait(lambda: self._api_ready(state.ports, credentials.token), deadline, "kube-apiserver", state)
            state.processes["kube-controller-manager"] = self._start(
                "kube-controller-manager", self._controller_manager_command()
            )
            if simulator:
                state.processes["simulator"] = self._start("simulator", self._simulator_command(state.ports))
            state.save(self.state_file)
            if simulator:
                # Ready once its Node is registered and it has listed the pods, so pods created next start.
                self._wait(lambda: self._simulator_healthy(state.ports), deadline, "simulator", state)
            if prometheus:
                write_config(self.prometheus_config, targets_file=self.targets_file)
                self.prometheus_data.mkdir(exist_ok=True)
                command = prometheus_command(self.prometheus_config, self.prometheus_data, state.ports.prometheus)
                state.processes["prometheus"] = self._start("prometheus", command)
                state.save(self.state_file)
                self._wait(lambda: is_ready(_prometheus_url(state.ports)), deadline, "prometheus", state)
        except BaseException:
            self._stop(state)
            raise
        return self.status()

    def down(self) -> list[str]:
        """Stop the processes `up` recorded, and only those; returns their names."""
        state = ClusterState.load(self.state_file)
        if state is None:
            return []
        stopped = self._stop(state)
        state.processes.clear()
        state.save(self.state_file)
        return stopped

    def status(self) -> ClusterStatus:
        state = ClusterState.load(self.state_file)
        running = {name: record.pid for name, record in (state.processes.items() if state else []) if record.alive()}
        stopped = [name for name in (state.processes if state else {}) if name not in running]
        ports = state.ports if state else None
        token = self._token()
        return ClusterStatus(
            root=self.root,
            kubeconfig=self.kubeconfig,
            apiserver_url=f"https://127.0.0.1:{ports.apiserver}" if ports else "",
            metrics_url=f"http://127.0.0.1:{ports.metrics}" if ports else "",
            prometheus_url=_prometheus_url(ports) if ports and state and "prometheus" in state.processes else "",
            running=running,
            stopped=stopped,
            api_ready=bool(ports and token and "kube-apiserver" in running and self._api_ready(ports, token)),
        )

    @property
    def metrics_url(self) -> str:
        """Where the simulated application's metrics are served (pods at /pods/<ns>/<pod>/metrics)."""
        state = ClusterState.load(self.state_file)
        if state is None:
            raise LocalClusterError(f"the local control plane in {self.root} has never been started")
        return f"http://127.0.0.1:{state.ports.metrics}"

    @property
    def prometheus_url(self) -> str:
        """Where the cluster's Prometheus answers queries (it scrapes every Ready pod as job `simulator`)."""
        state = ClusterState.load(self.state_file)
        if state is None or "prometheus" not in state.processes:
            raise LocalClusterError(f"the local control plane in {self.root} runs no Prometheus; start it with "
                                    "`ringmaster localcluster up`")
        return _prometheus_url(state.ports)

    def compact_etcd(self) -> int:
        """Compact etcd's history up to now, so that a watch of an uncached resource (events) from an
        older resource version expires with 410 Gone, as it does on a long-running cluster. For
        tests of relist-after-410; returns the revision compacted to."""
        state = ClusterState.load(self.state_file)
        if state is None:
            raise LocalClusterError(f"the local control plane in {self.root} has never been started")
        base = f"http://127.0.0.1:{state.ports.etcd_client}/v3/kv"

        def post(path: str, body: dict[str, str]) -> dict[str, Any]:
            request = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer

        revision = post("/range", {"key": "Lw=="})["header"]["revision"]  # key "/" in base64
        post("/compaction", {"revision": revision})
        return int(revision)

    def api_client(self) -> Any:
        """An ApiClient of the official `kubernetes` package for this cluster."""
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=configuration)
        return client.ApiClient(configuration)

    # Processes

    def _check_binaries(self) -> None:
        binaries = ("kube-apiserver", "kube-controller-manager")
        missing = [name for name in binaries if not (self.bin_dir / name).is_file()]
        if missing:
            raise LocalClusterError(
                f"{', '.join(missing)} not found in {self.bin_dir}; build them once with scripts/build-kube "
                "(`make test` and `make demo` do), or set RINGMASTER_KUBE_CACHE to where they are"
            )
        if shutil.which("etcd") is None:
            raise LocalClusterError("etcd is not installed; install Debian's etcd-server: apt-get install etcd-server")

    def _start(self, name: str, command: list[str]) -> ProcessRecord:
        log_path = self.logs / f"{name}.log"
        with log_path.open("ab") as log:
            # A session of its own: the process outlives the command that started it, and Ctrl-C
            # in that terminal does not reach it.
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True, cwd=self.root)
        ticks = None
        for _ in range(50):
            ticks = _process_start_ticks(process.pid)
            if ticks is not None:
                break
            time.sleep(0.01)
        if ticks is None:
            raise LocalClusterError(f"{name} exited at once; see {log_path}")
        return ProcessRecord(process.pid, ticks, str(log_path))

    def _wait(self, ready: Any, deadline: float, name: str, state: ClusterState) -> None:
        record = state.processes[name]
        while not ready():
            if not record.alive():
                raise LocalClusterError(f"{name} exited while starting; the end of {record.log}:\n"
                                        + log_tail(Path(record.log)))
            if time.monotonic() > deadline:
                raise LocalClusterError(f"{name} did not become ready in time; see {record.log}")
            time.sleep(0.1)

    def _stop(self, state: ClusterState) -> list[str]:
        stopped = []
        for name in STOP_ORDER:
            record = state.processes.get(name)
            if record is None or not record.alive():
                continue
            os.kill(record.pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while record.alive() and time.monotonic() < deadline:
                _reap(record.pid)
                time.sleep(0.05)
            if record.alive():
                os.kill(record.pid, signal.SIGKILL)
                while record.alive():
                    _reap(record.pid)
                    time.sleep(0.05)
            stopped.append(name)
        return stopped

    # Commands

    def _etcd_command(self, ports: Ports) -> list[str]:
        client_url = f"http://127.0.0.1:{ports.etcd_client}"
        peer_url = f"http://127.0.0.1:{ports.etcd_peer}"
        return [
            "etcd", "--name", "ringmaster", "--data-dir", str(self.root / "etcd"),
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"ringmaster={peer_url}",
            "--logger", "zap", "--log-level", "warn",
        ]

    def _apiserver_command(self, ports: Ports, credentials: Credentials) -> list[str]:
        return [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={ports.apiserver}", "--insecure-port=0",
            f"--tls-cert-file={credentials.server_cert}", f"--tls-private-key-file={credentials.server_key}",
            f"--token-auth-file={credentials.token_file}",
            # RBAC, as real clusters run: the token's user is in system:masters, which is allowed everything,
            # and tests/test_deploy.py impersonates the ServiceAccounts of deploy/ to check their Roles.
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={credentials.service_account_public_key}",
            f"--service-account-signing-key-file={credentials.service_account_key}",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--disable-admission-plugins=ServiceAccount",
            # As OpenShift does: setting blockOwnerDeletion needs update on the owner's finalizers.
            "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
            "--allow-privileged=true", "--profiling=false", "--v=0",
            f"--audit-policy-file={self.audit_policy}", f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json", f"--audit-log-maxsize={AUDIT_LOG_MAX_MB}", "--audit-log-maxbackup=1",
        ]

    def _controller_manager_command(self) -> list[str]:
        return [
            str(self.bin_dir / "kube-controller-manager"),
            f"--kubeconfig={self.kubeconfig}", f"--controllers={CONTROLLERS}",
            "--leader-elect=false", "--port=0", "--secure-port=0",
            "--use-service-account-credentials=false", "--v=0",
            # The defaults (20 requests/s, 5 StatefulSet workers) suit a shared production API server;
            # here they would make the StatefulSet controller the bottleneck of every large test.
            "--kube-api-qps=300", "--kube-api-burst=600", "--concurrent-statefulset-syncs=20",
        ]

    def _simulator_command(self, ports: Ports) -> list[str]:
        return [
            sys.executable, "-m", "rollout.localcluster.simulator",
            "--kubeconfig", str(self.kubeconfig), "--metrics-port", str(ports.metrics),
            "--targets-file", str(self.targets_file),
        ]

    # Health

    def _etcd_healthy(self, ports: Ports) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports.etcd_client}/health", timeout=1) as response:
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def _simulator_healthy(self, ports: Ports) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports.metrics}/healthz", timeout=1) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def _api_ready(self, ports: Ports, token: str) -> bool:
        context = ssl.create_default_context(cafile=str(self.root / "pki" / "ca.crt"))
        request = urllib.request.Request(f"https://127.0.0.1:{ports.apiserver}/readyz",
                                         headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=2, context=context) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def _token(self) -> str:
        try:
            return (self.root / "pki" / "tokens.csv").read_text().split(",", 1)[0]
        except OSError:
            return ""

    def _write_kubeconfig(self, ports: Ports, credentials: Credentials) -> None:
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "ringmaster-local", "cluster": {
                "server": f"https://127.0.0.1:{ports.apiserver}",
                "certificate-authority": str(credentials.ca_cert),
            }}],
            "users": [{"name": "ringmaster-admin", "user": {"token": credentials.token}}],
            "contexts": [{"name": "ringmaster-local", "context": {
                "cluster": "ringmaster-local", "user": "ringmaster-admin", "namespace": "default",
            }}],
            "current-context": "ringmaster-local",
        }
        temporary = self.kubeconfig.with_suffix(".tmp")
        temporary.write_text(yaml.safe_dump(document, sort_keys=False))
        temporary.chmod(0o600)
        temporary.replace(self.kubeconfig)


def _reap(pid: int) -> None:
    # A child of this very process (tests start and stop in one process) lingers as a zombie,
    # which /proc still lists, until it is waited for.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _prometheus_url(ports: Ports) -> str:
    return f"http://127.0.0.1:{ports.prometheus}"


def local_prometheus_url(root: Path | None = None) -> str | None:
    """The URL of the Prometheus of the local cluster in `root` (the default one unless given), if its
    state.json records one that is running; None otherwise."""
    state = ClusterState.load((root or default_root()).resolve() / "state.json")
    record = state.processes.get("prometheus") if state is not None else None
    if state is None or record is None or not record.alive() or not state.ports.prometheus:
        return None
    return _prometheus_url(state.ports)
