"""`ringmaster up` starts the whole system in its data folder, and Ctrl-C stops exactly what it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from kubernetes import client

from rollout.localcluster.cluster import LocalCluster
from rollout.localcluster.prometheus import free_port
from tests.polling import eventually

START_TIMEOUT_S = 180.0


def processes_under(folder: Path) -> set[int]:
    """Live processes started for `folder`: their working directory or RINGMASTER_DATA_DIR is in it."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            environment = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z":
            continue
        if cwd.startswith(str(folder)) or f"RINGMASTER_DATA_DIR={folder}".encode() in environment:
            found.add(int(entry.name))
    return found


class Up:
    """`ringmaster up` running in a subprocess, its output collected line by line."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        command = [sys.executable, "-m", "rollout", "up", "--data-dir", str(data_dir), "--port", str(self.port),
                   "--sync-port", str(free_port()), "--controller-metrics-port", str(free_port())]
        environment = {key: value for key, value in os.environ.items()
                       if not key.startswith("RINGMASTER_") and key != "KUBECONFIG"}
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**environment, "COLUMNS": "200"})
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_until_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Ringmaster is up" not in self.output:
            assert self.process.poll() is None, f"ringmaster up exited {self.process.returncode}:\n{self.output}"
            assert time.monotonic() < deadline, f"ringmaster up was not up in {START_TIMEOUT_S} s:\n{self.output}"
            time.sleep(0.2)

    def value(self, label: str) -> str:
        found = re.search(rf"^\s+{label}\s+(\S+)", self.output, re.MULTILINE)
        assert found, f"no {label} line in:\n{self.output}"
        return found[1]

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(60)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextmanager
def ringmaster_up(data_dir: Path, *, cleans_up_cluster: bool = True) -> Iterator[Up]:
    running = Up(data_dir)
    try:
        yield running
    finally:
        running.kill()
        if cleans_up_cluster:  # only after a failure does anything remain
            LocalCluster(data_dir / "localcluster").down()


def test_up_starts_the_whole_system_and_ctrl_c_stops_exactly_what_it_started(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with ringmaster_up(data_dir) as running:
        running.wait_until_up()
        assert running.value("dashboard") == f"http://127.0.0.1:{running.port}/dashboard"
        assert httpx.get(f"http://127.0.0.1:{running.port}/readyz", timeout=5).status_code == 200
        token = running.value("admin token")
        # The token printed is an admin's: it may change things, here pull and release the cord.
        headers = {"Authorization": f"Bearer {token}"}
        pulled = httpx.post(f"http://127.0.0.1:{running.port}/api/v1/andon/pull", headers=headers, timeout=5,
                            json={"reason": "checking the token ringmaster up printed"})
        assert pulled.status_code == 201, pulled.text
        released = httpx.post(f"http://127.0.0.1:{running.port}/api/v1/andon/release", headers=headers, timeout=5,
                              json={"id": pulled.json()["id"], "reason": "done checking"})
        assert released.status_code == 200, released.text

        with LocalCluster(data_dir / "localcluster").api_client() as api_client:
            web = client.AppsV1Api(api_client).read_namespaced_stateful_set("web", "default")
            assert web.status.ready_replicas == web.spec.replicas == 3
            lease = client.CoordinationV1Api(api_client).read_namespaced_lease("ringmaster-controller", "default")
            assert lease.spec.holder_identity.startswith("ringmaster-up-")
        prometheus = running.value("Prometheus")
        targets = httpx.get(f"{prometheus}/api/v1/query", params={"query": 'up{statefulset="web"}'}, timeout=5)
        assert targets.status_code == 200
        started = processes_under(data_dir)
        assert len(started) >= 6, f"expected the control plane, Prometheus, serve and controller: {started}"

        assert running.interrupt() == 0, running.output
        eventually(lambda: not processes_under(data_dir), timeout_s=30,
                   what="every process ringmaster up started has stopped")
        assert not LocalCluster(data_dir / "localcluster").status().api_ready


def test_up_leaves_a_control_plane_it_did_not_start_running(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    cluster = LocalCluster(data_dir / "localcluster")
    cluster.up()
    try:
        with ringmaster_up(data_dir, cleans_up_cluster=False) as running:
            running.wait_until_up()
            assert running.interrupt() == 0, running.output
        status = cluster.status()
        assert status.api_ready, "ringmaster up stopped a control plane that was running before it"
        assert set(status.running) >= {"etcd", "kube-apiserver", "kube-controller-manager", "simulator"}
    finally:
        cluster.down()


def test_up_refuses_a_port_in_use_and_names_the_option(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        finished = subprocess.run([sys.executable, "-m", "rollout", "up", "--data-dir", str(tmp_path), "--port",
                                   str(port)], capture_output=True, text=True, timeout=60)
    assert finished.returncode == 1
    assert f"--port {port}" in finished.stderr
    assert processes_under(tmp_path) == set()

