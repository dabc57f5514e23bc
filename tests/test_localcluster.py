"""`ringmaster localcluster up|down|status|kubeconfig`, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kubernetes import client, config

from rollout.localcluster.cluster import ClusterState, LocalCluster, local_prometheus_url
from rollout.localcluster.prometheus import instant_query
from tests.controller_harness import statefulset
from tests.polling import eventually

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


def test_status_reports_where_prometheus_answers(cluster_root: Path) -> None:
    status = run("status", "--root", str(cluster_root))
    url = local_prometheus_url(cluster_root)
    assert url is not None and url.startswith("http://127.0.0.1:")
    assert "prometheus " in status.stdout
    assert f"Prometheus at {url}" in status.stdout
    assert httpx.get(f"{url}/-/ready", timeout=5).status_code == 200


def test_prometheus_scrapes_the_ready_pods_of_a_statefulset(local_cluster: LocalCluster, namespace: str) -> None:
    status = local_cluster.status()
    assert "prometheus" in status.running and status.prometheus_url == local_cluster.prometheus_url
    web = statefulset("web", 2, "registry.example.com/web:1.0.0")
    web["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"] = "1.0.0"
    with local_cluster.api_client() as api_client:
        client.AppsV1Api(api_client).create_namespaced_stateful_set(namespace, web)
    selector = f'namespace="{namespace}",statefulset="web"'

    def scraped_pods() -> set[str] | None:
        pods = {series["metric"]["pod"]
                for series in instant_query(status.prometheus_url, f"up{{{selector}}} == 1", at_s=time.time())}
        return pods if pods == {"web-0", "web-1"} else None

    # Prometheus reads new targets at most every 5 s, whatever its scrape interval.
    eventually(scraped_pods, timeout_s=30, what="both pods of StatefulSet web scraped")
    requests = instant_query(status.prometheus_url, f"sim_http_requests_total{{{selector}}}", at_s=time.time())
    assert {(series["metric"]["pod"], series["metric"]["version"]) for series in requests} == {
        ("web-0", "1.0.0"), ("web-1", "1.0.0")}
    assert all(series["metric"]["revision"].startswith("web-") for series in requests)


def test_a_state_file_from_before_prometheus_still_loads(tmp_path: Path) -> None:
    old = {"ports": {"etcd_client": 1, "etcd_peer": 2, "apiserver": 3, "metrics": 4},
           "processes": {}, "started_at": 0.0}
    (tmp_path / "state.json").write_text(json.dumps(old))
    state = ClusterState.load(tmp_path / "state.json")
    assert state is not None and state.ports.prometheus == 0
    assert local_prometheus_url(tmp_path) is None
    assert LocalCluster(tmp_path).status().prometheus_url == ""
