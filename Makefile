# Two entry points for a fresh Debian machine: `make demo` runs the main job, `make test` the suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint typecheck unit venv bench clean control-plane

$(INSTALLED): pyproject.toml flagd-provider/pyproject.toml
	scripts/ensure-python-venv "$(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]' -e ./flagd-provider
	touch $@

venv: $(INSTALLED)

# The local Kubernetes control plane: kube-apiserver and kube-controller-manager built once into
# ~/.cache/ringmaster (about 3 to 8 minutes cold), Debian's etcd, openssl for its keys, kubectl, and
# Debian's Prometheus, which scrapes the simulated application.
control-plane:
	scripts/build-kube
	scripts/ensure-debian-packages etcd-server openssl chromium
	command -v kubectl >/dev/null || scripts/ensure-debian-packages kubernetes-client
	scripts/ensure-prometheus

# `ringmaster demo` builds the control plane itself on first use, behind a progress bar.
demo: venv
	$(BIN)/ringmaster demo

test: venv control-plane lint typecheck unit

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy

unit: venv
	scripts/ensure-postgres
	$(BIN)/pytest -n 2 --dist loadfile

bench: venv
	$(BIN)/python -m bench.assign
	scripts/ensure-postgres
	$(BIN)/python -m bench.usage_ingest
	$(BIN)/python -m bench.propagation
	$(BIN)/python -m bench.provider
	$(BIN)/python -m bench.controller
	$(BIN)/python -m bench.gates
	$(BIN)/python -m bench.andon
	$(BIN)/python -m bench.scale --rollouts 10000 --progressing 200
	scripts/ensure-debian-packages wrk
	$(BIN)/python -m bench.ofrep --repeats 3

clean:
	rm -rf $(VENV) .ringmaster .mypy_cache .ruff_cache .pytest_cache .hypothesis
