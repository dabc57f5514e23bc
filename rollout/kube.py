"""Reaching Kubernetes: the ApiClient a Ringmaster process talks to the API server with.

`ringmaster controller` and `ringmaster serve` (its rollout routes) look in the same order: the
kubeconfig given, else the service account of the pod they run in, else the local control plane's
kubeconfig (`ringmaster localcluster up`).
"""

from __future__ import annotations

from pathlib import Path

from kubernetes import client, config

NOT_CONFIGURED = ("set RINGMASTER_KUBECONFIG or KUBECONFIG to a kubeconfig, run Ringmaster in a cluster, "
                  "or start the local control plane with `ringmaster localcluster up`")


def load_api_client(kubeconfig: Path | None) -> client.ApiClient | None:
    """An ApiClient from `kubeconfig`, else in-cluster, else the local control plane's kubeconfig; None when
    there is none of them. A kubeconfig that cannot be read raises `config.ConfigException`."""
    configuration = client.Configuration()
    if kubeconfig is None:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            from rollout.localcluster.cluster import LocalCluster

            kubeconfig = LocalCluster().kubeconfig
            if not kubeconfig.exists():
                return None
        else:
            return client.ApiClient(configuration)
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return client.ApiClient(configuration)
