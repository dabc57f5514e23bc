"""The examples as a user applies them: `kubectl apply` on the local control plane, the controller
running, Prometheus scraping the simulated app. examples/ is a healthy release that ends Succeeded;
examples/bad-release/ is caught by its gates in the canary ring and ends RolledBack with the flag off."""

from __future__ import annotations

import subprocess
from pathlib import Path

from rollout.localcluster.cluster import LocalCluster
from tests.controller_harness import CapacitySampler, wait_for, wait_ready
from tests.test_gates_e2e import FlagWatch, controller

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CRDS = EXAMPLES.parent / "deploy" / "crd"


def kubectl_apply(local_cluster: LocalCluster, namespace: str, *paths: Path) -> None:
    files = [argument for path in paths for argument in ("-f", str(path))]
    done = subprocess.run(["kubectl", "--kubeconfig", str(local_cluster.kubeconfig), "-n", namespace, "apply",
                           *files], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def never_below(sampler: CapacitySampler, replicas: int) -> None:
    assert sampler.samples
    assert min(sampler.total_ready()) >= replicas, sorted(set(sampler.total_ready()))


def test_the_example_release_passes_its_gates_and_succeeds(
        local_cluster: LocalCluster, namespace: str, tmp_path: Path) -> None:
    with controller(local_cluster, namespace, tmp_path, local_cluster.prometheus_url) as gated:
        kubectl_apply(local_cluster, namespace, EXAMPLES / "statefulset.yaml", EXAMPLES / "slogates.yaml")
        wait_ready(gated.api_client, namespace, "web", 3)
        with CapacitySampler(gated.api_client, namespace) as sampler:
            kubectl_apply(local_cluster, namespace, EXAMPLES / "rollout.yaml")
            status = gated.wait("Succeeded", lambda status: status.get("phase") in ("Succeeded", "RolledBack",
                                                                                    "Paused"), timeout_s=300)
    assert status["phase"] == "Succeeded", status.get("message")
    never_below(sampler, 3)
    assert gated.flag_on_rings("web-v2") == {"canary", "early-adopter", "stable", "laggard"}
    # Measurements are recorded with the actions, after the status that ends the rollout.
    wait_for("the last measurement recorded", lambda: ("laggard", "error-budget", "Passed") in gated.verdicts(), 10)
    passed = {(ring, gate) for ring, gate, verdict in gated.verdicts() if verdict == "Passed"}
    assert {("canary", "errors-vs-baseline"), ("early-adopter", "errors-vs-baseline"),
            ("laggard", "error-budget")} <= passed


def test_the_bad_release_is_rolled_back_in_canary_with_the_flag_off(
        local_cluster: LocalCluster, namespace: str, tmp_path: Path) -> None:
    with controller(local_cluster, namespace, tmp_path, local_cluster.prometheus_url) as gated:
        kubectl_apply(local_cluster, namespace, EXAMPLES / "bad-release" / "statefulset.yaml")
        wait_ready(gated.api_client, namespace, "shop", 3)
        with CapacitySampler(gated.api_client, namespace) as sampler, FlagWatch(gated, "shop-v4-2") as flag:
            kubectl_apply(local_cluster, namespace, EXAMPLES / "bad-release" / "rollout.yaml")
            status = gated.wait("RolledBack", lambda status: status.get("phase") in ("RolledBack", "Succeeded"),
                                timeout_s=180, name="shop")
    assert status["phase"] == "RolledBack", status.get("message")
    assert "failed in ring canary" in status["rollbackReason"]
    never_below(sampler, 3)
    assert gated.flag_on_rings("shop-v4-2") == set()
    assert any(rings == {"canary"} for _, rings in flag.readings)
    assert [verdict for _, _, verdict in gated.verdicts("shop")].count("Failed") >= 1

