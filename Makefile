# Switchboard developer targets (the names kubebuilder projects use).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CLUSTER_DIR ?= .cluster
# real: kubelet, containerd, CNI, kube-proxy and CoreDNS in a namespace of their own; local: the
# test kit's local node (pods as host processes, no images).
NODE ?= real
# The kubeconfig `make install` / `make run` use: $KUBECONFIG, else the local cluster's.
KUBECONFIG ?= $(CURDIR)/$(CLUSTER_DIR)/kubeconfig
export KUBECONFIG

.PHONY: help venv binaries cluster-binaries image test lint cluster-up cluster-down cluster-status install run demo bench clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml tests/pyproject.toml
	$(BIN)/pip install -q -e '.[dev]' -e tests/
	@touch $@

venv: $(VENV)/.installed ## create .venv with the project and its dev tools

binaries: ## build etcd, the control plane, kubectl, helm, kstatus, promtool, prometheus, kube-score (cached)
	@bash hack/build-binaries.sh >/dev/null

# What a cluster and the demo need: not the tests' checkers (promtool, prometheus, kube-score).
cluster-binaries:
	@SWITCHBOARD_TOOLS=cluster bash hack/build-binaries.sh >/dev/null

image: ## build the project's OCI image without Docker (mmdebstrap + umoci; needs root)
	@bash hack/build-image.sh | awk '$$1 == "switchboard" {print "image " $$2 "\narchive " $$3}'

test: venv binaries ## ruff, mypy, then the whole test suite (starts its own control plane)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

lint: venv ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/mypy

cluster-up: venv cluster-binaries ## start the control plane and a real node (NODE=local: the local node)
	SWITCHBOARD_TOOLS=cluster $(BIN)/switchboard-devcluster up --node $(NODE) --workdir $(CLUSTER_DIR)

cluster-down: ## stop what cluster-up started (processes, the node's namespace and cgroups)
	@if [ -x $(BIN)/switchboard-devcluster ]; then $(BIN)/switchboard-devcluster down --workdir $(CLUSTER_DIR); fi

cluster-status: ## processes and memory of the local cluster
	$(BIN)/switchboard-devcluster status --workdir $(CLUSTER_DIR)

install: cluster-binaries ## apply the CRDs to the current kubeconfig
	PATH="$$(SWITCHBOARD_TOOLS=cluster bash hack/build-binaries.sh | tr '\n' ':')$$PATH" kubectl apply --server-side -f crds/

# `make run` beside an installed chart: the same Lease (the chart's release namespace), so only
# one of the two acts; its own ports are free ones on 127.0.0.1 (gateways may hold 8080/9090).
RUN_LEASE_NAMESPACE ?= switchboard-system
FREE_PORT = $(BIN)/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'

run: venv install ## run the operator against the current kubeconfig
	@health=$$($(FREE_PORT)); metrics=$$($(FREE_PORT)); \
	lease=$$($(BIN)/python -c 'import sys; from kubernetes import client, config; config.load_kube_config(); client.CoreV1Api().read_namespace(sys.argv[1]); print(sys.argv[1])' $(RUN_LEASE_NAMESPACE) 2>/dev/null || echo default); \
	echo "switchboard-operator: /healthz on 127.0.0.1:$$health, /metrics on 127.0.0.1:$$metrics, Lease in $$lease"; \
	$(BIN)/switchboard-operator --all-namespaces --lease-namespace "$$lease" \
	  --health-address 127.0.0.1 --health-port "$$health" \
	  --metrics-address 127.0.0.1 --metrics-port "$$metrics"

demo: venv cluster-binaries ## control plane, Helm chart, fake platforms, two connections, an outage
	SWITCHBOARD_TOOLS=cluster $(BIN)/python -m switchboard_testkit.demo --node $(NODE) --workdir $(CLUSTER_DIR)

bench: venv binaries ## print the benchmark figures
	$(BIN)/python bench/operator_scale.py
	$(BIN)/python bench/gateway_relay.py
	$(BIN)/python bench/secret_memory.py
	$(BIN)/python bench/node_startup.py

clean: cluster-down ## remove the local cluster state and the venv
	rm -rf $(CLUSTER_DIR) $(VENV)
