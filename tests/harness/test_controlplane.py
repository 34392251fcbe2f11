"""The control plane is real: CRDs establish, the status subresource and printer columns work,
RBAC denies what a Role does not grant."""

from __future__ import annotations

import textwrap

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from switchboard_testkit.cluster import Cluster
from switchboard_testkit.controlplane import wait_for

WIDGET_CRD = textwrap.dedent("""
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata: {name: widgets.harness.switchboard.dev}
    spec:
      group: harness.switchboard.dev
      names: {kind: Widget, plural: widgets, singular: widget}
      scope: Namespaced
      versions:
      - name: v1
        served: true
        storage: true
        subresources: {status: {}}
        additionalPrinterColumns:
        - {name: Colour, type: string, jsonPath: .spec.colour}
        - {name: Phase, type: string, jsonPath: .status.phase}
        schema:
          openAPIV3Schema:
            type: object
            properties:
              spec:
                type: object
                properties: {colour: {type: string, enum: [red, blue]}}
              status:
                type: object
                properties: {phase: {type: string}}
""")


def test_readyz_answers_ok(cluster: Cluster) -> None:
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"


def test_crd_with_status_subresource_and_printer_columns(cluster: Cluster, namespace: str,
                                                         api: client.ApiClient) -> None:
    cluster.kubectl("apply", "-f", "-", input=WIDGET_CRD)
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                    "crd/widgets.harness.switchboard.dev")
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=textwrap.dedent("""
        apiVersion: harness.switchboard.dev/v1
        kind: Widget
        metadata: {name: w1}
        spec: {colour: red}
    """))
    custom = client.CustomObjectsApi(api)
    args = ("harness.switchboard.dev", "v1", namespace, "widgets", "w1")
    # The main resource ignores status; only the status subresource writes it.
    custom.patch_namespaced_custom_object(*args, {"status": {"phase": "Ignored"}})
    assert "status" not in custom.get_namespaced_custom_object(*args)
    custom.patch_namespaced_custom_object_status(*args, {"status": {"phase": "Shiny"}})
    assert custom.get_namespaced_custom_object(*args)["status"] == {"phase": "Shiny"}

    table = cluster.kubectl("-n", namespace, "get", "widgets").stdout.splitlines()
    assert table[0].split() == ["NAME", "COLOUR", "PHASE"]
    assert table[1].split()[:3] == ["w1", "red", "Shiny"]

    bad = cluster.kubectl("-n", namespace, "apply", "-f", "-", check=False,
                          input=textwrap.dedent("""
        apiVersion: harness.switchboard.dev/v1
        kind: Widget
        metadata: {name: w2}
        spec: {colour: green}
    """))
    assert bad.returncode != 0
    assert 'Unsupported value: "green"' in bad.stderr


def test_service_account_token_gets_403_outside_its_role(namespace: str,
                                                         api: client.ApiClient) -> None:
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "narrow"}})
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "read-configmaps"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "narrow"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "read-configmaps"},
        "subjects": [{"kind": "ServiceAccount", "name": "narrow", "namespace": namespace}]})
    token = core.create_namespaced_service_account_token(
        "narrow", namespace,
        client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=["https://kubernetes.default.svc.cluster.local"],
            expiration_seconds=600))).status.token

    cfg = client.Configuration()
    cfg.host, cfg.ssl_ca_cert = api.configuration.host, api.configuration.ssl_ca_cert
    cfg.api_key = {"authorization": f"Bearer {token}"}
    narrow = client.CoreV1Api(client.ApiClient(cfg))
    # RBAC may take a moment to see the new binding.
    wait_for(lambda: narrow.list_namespaced_config_map(namespace) is not None, 10,
             "the narrow token to list configmaps")
    for forbidden in (lambda: narrow.list_namespaced_secret(namespace),
                      lambda: narrow.list_namespaced_config_map("default"),
                      lambda: narrow.create_namespaced_config_map(
                          namespace, {"metadata": {"name": "x"}})):
        with pytest.raises(ApiException) as err:
            forbidden()
        assert err.value.status == 403


def test_a_new_cluster_in_a_used_workdir_starts_empty(tmp_path: pytest.TempPathFactory) -> None:
    """Before: etcd's data stayed in the workdir, so `make cluster-up NODE=local` followed by
    `make demo` (the real node) brought back the local node's Node object, and the scheduler
    bound CoreDNS to it: the demo timed out waiting for CoreDNS."""
    from pathlib import Path

    from switchboard_testkit.cluster import running

    workdir = Path(str(tmp_path)) / "reused"
    with running(Cluster(workdir)) as first:
        client.CoreV1Api(first.api_client()).create_namespace(
            {"metadata": {"name": "from-the-first-cluster"}})
    with running(Cluster(workdir)) as second:
        names = {n.metadata.name for n in client.CoreV1Api(second.api_client())
                 .list_namespace().items}
        assert "from-the-first-cluster" not in names
        assert "default" in names
