"""`ringmaster localcluster up|down|status|kubeconfig`, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from rollout.localcluster.cluster import ClusterState, LocalCluster

RINGMASTER = [sys.executable, "-m", "rollout", "localcluster"]


def run(*arguments: str, environment: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RINGMASTER, *arguments], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200", **(environment or {})})


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.fixture(scope="module")
def cluster_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("cli-cluster")
    started = time.monotonic()
    up = run("up", "--root", str(root))
    assert up.returncode == 0, up.stdout + up.stderr
    assert time.monotonic() - started < 30
    yield root
    run("down", "--root", str(root))


def test_up_writes_a_kubeconfig_the_official_client_can_use(cluster_root: Path) -> None:
    path = run("kubeconfig", "--root", str(cluster_root)).stdout.strip()
    assert path == str(cluster_root / "kubeconfig")
    with config.new_client_from_config(config_file=path) as api_client:
        version = client.VersionApi(api_client).get_code()
        names = [item.metadata.name for item in client.CoreV1Api(api_client).list_namespace().items]
    assert version.git_version == "v1.20.2"
    assert "default" in names


def test_status_lists_every_process_and_says_the_api_answers(cluster_root: Path) -> None:
    status = run("status", "--root", str(cluster_root))
    assert status.returncode == 0, status.stderr
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "simulator"):
        assert f"{name} " in status.stdout and "running" in status.stdout
    assert "API ready at https://127.0.0.1:" in status.stdout


def test_up_on_a_running_cluster_changes_nothing(cluster_root: Path) -> None:
    before = json.loads((cluster_root / "state.json").read_text())["processes"]
    assert run("up", "--root", str(cluster_root)).returncode == 0
    assert json.loads((cluster_root / "state.json").read_text())["processes"] == before


def test_down_stops_exactly_the_processes_up_started(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster")
    cluster.up(simulator=False)
    state = ClusterState.load(cluster.state_file)
    assert state is not None
    pids = {name: record.pid for name, record in state.processes.items()}
    # A process that is not the cluster's but carries a PID the state file is made to name:
    # `down` must recognise it by its start time and leave it alone.
    bystander = subprocess.Popen(["sleep", "60"])
    state.processes["etcd"].pid, real_etcd = bystander.pid, state.processes["etcd"].pid
    state.save(cluster.state_file)
    try:
        stopped = run("down", "--root", str(cluster.root))
        assert stopped.returncode == 0
        assert "kube-apiserver" in stopped.stdout and "etcd" not in stopped.stdout
        assert alive(bystander.pid)
        assert not alive(pids["kube-apiserver"]) and not alive(pids["kube-controller-manager"])
    finally:
        bystander.kill()
        bystander.wait()
        os.kill(real_etcd, 15)
    status = run("status", "--root", str(cluster.root))
    assert status.returncode == 1 and "is not answering" in status.stderr


def test_missing_binaries_are_explained(tmp_path: Path) -> None:
    up = run("up", "--root", str(tmp_path / "cluster"), environment={"RINGMASTER_KUBE_CACHE": str(tmp_path / "none")})
    assert up.returncode == 1
    assert "build them once with scripts/build-kube" in up.stderr
