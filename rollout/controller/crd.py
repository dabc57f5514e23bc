"""The Rollout and SLOGate CustomResourceDefinitions: where their manifests are, and installing them
idempotently.

The manifests are deploy/crd/rollouts.yaml and slogates.yaml in the source tree, found relative to this file; that holds
for the editable install (`pip install -e .`) the project uses, not for a wheel, which does not ship
deploy/.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

CRD_PATH = Path(__file__).resolve().parents[2] / "deploy" / "crd" / "rollouts.yaml"
SLOGATE_CRD_PATH = CRD_PATH.with_name("slogates.yaml")
_POLL_S = 0.1


class CrdNotEstablished(RuntimeError):
    """The API server did not accept or serve the Rollout CRD in time; the message says what it reported."""


def crd_manifest(path: Path | None = None) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load((path or CRD_PATH).read_text())
    return manifest


def install_crd(api_client: client.ApiClient, *, timeout_s: float = 30) -> None:
    """Create the Rollout and SLOGate CRDs, or replace them with the manifests' versions, then wait until
    each is Established."""
    for path in (CRD_PATH, SLOGATE_CRD_PATH):
        _install(api_client, crd_manifest(path), timeout_s)


def _install(api_client: client.ApiClient, manifest: dict[str, Any], timeout_s: float) -> None:
    extensions = client.ApiextensionsV1Api(api_client)
    name = manifest["metadata"]["name"]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            current = extensions.read_custom_resource_definition(name)
        except ApiException as error:
            if error.status != 404:
                raise
            current = None
        try:
            if current is None:
                extensions.create_custom_resource_definition(manifest)
            else:
                replacement = {**manifest, "metadata": {**manifest["metadata"],
                                                        "resourceVersion": current.metadata.resource_version}}
                extensions.replace_custom_resource_definition(name, replacement)
            break
        except ApiException as error:
            # Another installer got there between our read and write: read again and retry.
            if error.status != 409 or time.monotonic() > deadline:
                raise
    last_seen = "no conditions yet"
    while True:
        conditions = extensions.read_custom_resource_definition(name).status.conditions or []
        if any(condition.type == "Established" and condition.status == "True" for condition in conditions):
            return
        last_seen = "; ".join(f"{c.type}={c.status} ({c.message})" for c in conditions) or last_seen
        if time.monotonic() > deadline:
            raise CrdNotEstablished(f"CRD {name} was not Established within {timeout_s} s: {last_seen}; "
                                    "see the kube-apiserver log")
        time.sleep(_POLL_S)
