"""The local Kubernetes control plane for tests and demos: real etcd, kube-apiserver and
kube-controller-manager on loopback, and a node simulator that plays kubelet and scheduler."""
