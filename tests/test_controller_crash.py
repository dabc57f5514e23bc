"""Crash safety: a controller SIGKILLed again and again over a full rollout still finishes it, and finishes it
the same way an uninterrupted controller does, with capacity held and no StatefulSet scaled past its plan.

The kill points are seeded: each run of the controller process kills itself (SIGKILL) right after its
n-th write to Kubernetes or the database, n drawn from the seed. RINGMASTER_CRASH_SEED replays a run.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from kubernetes import client

from cohorts.db import make_engine, upgrade
from rollout.controller.crd import install_crd
from rollout.flags.spec import RingTargeting
from rollout.flags.store import FlagStore
from rollout.localcluster.cluster import LocalCluster
from tests.controller_harness import CapacitySampler, get_rollout, phase_of, rollout, statefulset, wait_for, wait_ready
from tests.controller_processes import ControllerProcess

REPLICAS = 3
SURGE = 1
DEFAULT_SEED = 20261127
MIN_KILLS = 20


def _final_state(api_client: Any, namespace: str, database_url: str) -> dict[str, Any]:
    """What a finished rollout left behind, without times, uids and names that differ between runs."""
    status = get_rollout(api_client, namespace, "web")["status"]
    apps = client.AppsV1Api(api_client)
    replicas = {item.metadata.name: (item.spec.replicas, item.status.ready_replicas or 0)
                for item in apps.list_namespaced_stateful_set(namespace).items}
    engine = make_engine(database_url)
    targeting = FlagStore(engine).get_flag("web-v2").spec.targeting
    engine.dispose()
    assert isinstance(targeting, RingTargeting)
    return {
        "phase": status["phase"],
        "stable": status["stableStatefulSet"],
        "stableRevision": status["stableRevision"],
        "pin": status["pin"],
        "rings": [(record["ring"], record.get("outcome")) for record in status["history"]],
        "statefulsets": replicas,
        "flag": (targeting.rings.variants, targeting.rings.otherwise, targeting.rings.version, targeting.rings.epoch),
    }


def _run(local_cluster: LocalCluster, api_client: Any, namespace: str, tmp_path: Path,
         rng: random.Random | None) -> tuple[dict[str, Any], CapacitySampler, int]:
    url = f"sqlite:///{tmp_path / f'{namespace}.db'}"
    upgrade(url)
    client.AppsV1Api(api_client).create_namespaced_stateful_set(
        namespace, statefulset("web", REPLICAS, "registry.example.com/web:1.0.0"))
    wait_ready(api_client, namespace, "web", REPLICAS)
    kills = 0
    with CapacitySampler(api_client, namespace) as sampler:
        client.CustomObjectsApi(api_client).create_namespaced_custom_object(
            "ringmaster.dev", "v1alpha1", namespace, "rollouts",
            rollout("web", "web", flag="web-v2", bakes=("1s", "1s", "0s", "0s"), max_surge=SURGE))
        while phase_of(api_client, namespace, "web") != "Succeeded":
            assert kills < 200, "the rollout does not finish"
            kill_after = rng.randint(1, 2) if rng is not None else None
            # One identity for every restart: the Lease a killed run held is taken back at once.
            process = ControllerProcess(local_cluster.kubeconfig, namespace, url, "crash", tmp_path,
                                        kill_after_writes=kill_after)
            if kill_after is None:
                wait_for("Succeeded", lambda: phase_of(api_client, namespace, "web") == "Succeeded", 120)
                assert process.terminate() == 0
                break
            code = process.wait(timeout_s=120)
            if code == -9:
                kills += 1
            else:
                raise AssertionError(f"the controller exited with {code}:\n{process.log()[-3000:]}")
    return _final_state(api_client, namespace, url), sampler, kills


def test_a_rollout_survives_20_kills_and_ends_as_an_uninterrupted_one(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    seed = int(os.environ.get("RINGMASTER_CRASH_SEED", DEFAULT_SEED))
    with local_cluster.api_client() as api_client:
        install_crd(api_client)
        core = client.CoreV1Api(api_client)
        namespaces = [f"crash-{seed % 10_000}-{kind}-{os.urandom(2).hex()}" for kind in ("calm", "killed")]
        for name in namespaces:
            core.create_namespace({"metadata": {"name": name}})
        try:
            calm, _, _ = _run(local_cluster, api_client, namespaces[0], tmp_path, None)
            killed, sampler, kills = _run(local_cluster, api_client, namespaces[1], tmp_path, random.Random(seed))
        finally:
            for name in namespaces:
                core.delete_namespace(name)
    print(f"crash test: seed {seed}, {kills} kills")
    assert kills >= MIN_KILLS, f"seed {seed} gave only {kills} kills"
    assert killed == calm, f"seed {seed}: a killed controller finished differently"
    assert min(sampler.total_ready()) >= REPLICAS, f"seed {seed}: ready capacity fell below the target"
    assert max(sampler.total_replicas()) <= REPLICAS + SURGE, f"seed {seed}: more replicas than the surge allows"
    new = killed["stable"]
    assert sampler.max_replicas(new) <= REPLICAS and sampler.max_replicas("web") <= REPLICAS
