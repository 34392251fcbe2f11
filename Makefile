# Switchboard developer targets (the names kubebuilder projects use).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CLUSTER_DIR ?= .cluster
# The kubeconfig `make install` / `make run` use: $KUBECONFIG, else the local cluster's.
KUBECONFIG ?= $(CURDIR)/$(CLUSTER_DIR)/kubeconfig
export KUBECONFIG

.PHONY: help venv binaries test lint cluster-up cluster-down cluster-status install run demo bench clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml tests/pyproject.toml
	$(BIN)/pip install -q -e '.[dev]' -e tests/
	@touch $@

venv: $(VENV)/.installed ## create .venv with the project and its dev tools

binaries: ## build etcd, kube-apiserver, kube-controller-manager, kubectl, helm (cached)
	@bash hack/build-binaries.sh >/dev/null

test: venv binaries ## ruff, mypy, then the whole test suite (starts its own control plane)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

lint: venv ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/mypy

cluster-up: venv binaries ## start etcd, kube-apiserver, kube-controller-manager and the local node
	$(BIN)/switchboard-devcluster up --workdir $(CLUSTER_DIR)

cluster-down: ## stop exactly the processes cluster-up started
	@if [ -x $(BIN)/switchboard-devcluster ]; then $(BIN)/switchboard-devcluster down --workdir $(CLUSTER_DIR); fi

cluster-status: ## processes and memory of the local cluster
	$(BIN)/switchboard-devcluster status --workdir $(CLUSTER_DIR)

install: binaries ## apply the CRDs to the current kubeconfig
	PATH="$$(bash hack/build-binaries.sh | tr '\n' ':')$$PATH" kubectl apply --server-side -f crds/

run: venv install ## run the operator against the current kubeconfig
	$(BIN)/switchboard-operator --all-namespaces

demo: venv binaries ## control plane, Helm chart, fake platforms, two connections, an outage
	$(BIN)/python -m switchboard_testkit.demo --workdir $(CLUSTER_DIR)

bench: venv binaries ## print the benchmark figures
	$(BIN)/python bench/operator_scale.py
	$(BIN)/python bench/gateway_relay.py
	$(BIN)/python bench/secret_memory.py

clean: cluster-down ## remove the local cluster state and the venv
	rm -rf $(CLUSTER_DIR) $(VENV)
