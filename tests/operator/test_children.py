"""A PlatformConnection becomes SA, Role, RoleBinding and Deployment with the right content."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException
from opkit import Kit, Operator, secret, telegram_conn

from switchboard_testkit.controlplane import wait_for


def test_children_have_owner_refs_security_probes_env_and_scoped_rbac(
        kit: Kit, operator: Operator) -> None:
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    body = telegram_conn("bot", apiBaseURL="http://127.0.0.1:9/bot",
                         gateway={"nodeSelector": {"switchboard.dev/test-no-such-node": "x"},
                                  "env": [{"name": "EXTRA", "value": "1"}]})
    created = kit.create(body)
    uid = created["metadata"]["uid"]

    dep = wait_for(lambda: kit.deployment("bot"), 30, "the gateway Deployment")
    sa = kit.core.read_namespaced_service_account("bot-gateway", kit.ns)
    role = kit.rbac.read_namespaced_role("bot-gateway", kit.ns)
    rb = kit.rbac.read_namespaced_role_binding("bot-gateway", kit.ns)
    lease = client.CoordinationV1Api(kit.api).read_namespaced_lease("bot-gateway", kit.ns)
    for obj in (dep, sa, role, rb, lease):
        (ref,) = obj.metadata.owner_references
        assert (ref.kind, ref.name, ref.uid, ref.controller) == ("PlatformConnection", "bot",
                                                                  uid, True)
        assert obj.metadata.labels["app.kubernetes.io/managed-by"] == "switchboard-operator"

    assert dep.spec.replicas == 1 and dep.spec.strategy.type == "Recreate"
    pod = dep.spec.template.spec
    assert pod.service_account_name == "bot-gateway"
    assert pod.security_context.run_as_non_root and pod.security_context.run_as_user == 65532
    assert pod.security_context.seccomp_profile.type == "RuntimeDefault"
    (c,) = pod.containers
    assert c.command == ["switchboard-gateway"]
    sc = c.security_context
    assert sc.run_as_non_root and sc.read_only_root_filesystem
    assert sc.allow_privilege_escalation is False and sc.capabilities.drop == ["ALL"]
    assert sc.seccomp_profile.type == "RuntimeDefault"
    assert (c.liveness_probe.http_get.path, c.liveness_probe.http_get.port) == ("/healthz",
                                                                                "health")
    assert c.readiness_probe.http_get.path == "/readyz"
    assert {(p.name, p.container_port) for p in c.ports} == {("health", 8080),
                                                             ("metrics", 9090)}
    env = {e.name: e for e in c.env}
    assert env["SWITCHBOARD_CONNECTION"].value == "bot"
    assert env["SWITCHBOARD_NAMESPACE"].value == kit.ns
    assert env["SWITCHBOARD_PLATFORM"].value == "telegram"  # spec env may not name it (CEL)
    assert env["SWITCHBOARD_API_BASE_URL"].value == "http://127.0.0.1:9/bot"
    assert env["SWITCHBOARD_BACKEND_ECHO"].value == "true"
    assert env["SWITCHBOARD_RECONNECT"].value == (
        '{"initialDelaySeconds": 5, "maxAttempts": 10, "maxDelaySeconds": 60}')
    token = env["SWITCHBOARD_TELEGRAM_TOKEN"].value_from.secret_key_ref
    assert (token.name, token.key) == ("tg", "token")
    assert env["SWITCHBOARD_POD_NAME"].value_from.field_ref.field_path == "metadata.name"
    assert env["SWITCHBOARD_BIND_ADDRESS"].value_from.field_ref.field_path == "status.podIP"
    assert env["SWITCHBOARD_POLLER_LEASE"].value == "bot-gateway"
    assert env["EXTRA"].value == "1"
    annotations = dep.spec.template.metadata.annotations
    assert annotations["switchboard.dev/spec-hash"] and annotations["switchboard.dev/secret-hash"]

    rules: list[dict[str, Any]] = [r.to_dict() for r in role.rules]
    # Exactly what the gateway uses: get its own connection, patch its own status, read and
    # renew its own poller Lease.
    assert [(r["resources"], r["resource_names"], r["verbs"]) for r in rules] == [
        (["platformconnections"], ["bot"], ["get"]),
        (["platformconnections/status"], ["bot"], ["patch"]),
        (["leases"], ["bot-gateway"], ["get", "update"])]
    assert rb.role_ref.name == "bot-gateway"
    assert [(s.kind, s.name) for s in rb.subjects] == [("ServiceAccount", "bot-gateway")]

    # Status: observedGeneration and a Ready condition, kopf bookkeeping nowhere in status.
    status = wait_for(lambda: (s := kit.status("bot")).get("observedGeneration") and s, 30,
                      "status.observedGeneration")
    assert status["observedGeneration"] == created["metadata"]["generation"]
    assert kit.ready("bot")["status"] == "False"
    assert not any(k.startswith("kopf") for k in status)
    meta = kit.get("bot")["metadata"]
    assert not meta.get("finalizers")


def test_gateway_token_writes_own_status_but_cannot_touch_another_connection(
        kit: Kit, operator: Operator) -> None:
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("one"))
    kit.create(telegram_conn("two"))
    for name in ("one", "two"):
        wait_for(lambda n=name: kit.rbac.read_namespaced_role_binding(f"{n}-gateway", kit.ns),
                 30, f"{name} RBAC")
    gw = kit.gateway_client("one")
    kit.report(gw, "one", "connected", pod="one-pod")
    c = kit.wait_ready("one", "True", "Connected")
    assert "one-pod" in c["message"]
    # The operator's fields survive the gateway's write and vice versa (two field managers).
    st = kit.status("one")
    assert st["state"] == "connected" and st["observedGeneration"] == 1

    for call in (
        lambda: client.CustomObjectsApi(gw).get_namespaced_custom_object(
            "switchboard.dev", "v1alpha1", kit.ns, "platformconnections", "two"),
        lambda: kit.report(gw, "two", "connected", pod="intruder"),
    ):
        try:
            call()
        except ApiException as exc:
            assert exc.status == 403
        else:
            raise AssertionError("the gateway token reached another connection")
    assert kit.status("two").get("state") is None


def test_deleting_the_connection_removes_all_children(kit: Kit, operator: Operator) -> None:
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("gone"))
    wait_for(lambda: kit.deployment("gone"), 30, "the gateway Deployment")
    kit.custom.delete_namespaced_custom_object("switchboard.dev", "v1alpha1", kit.ns,
                                               "platformconnections", "gone")

    def all_gone() -> bool:
        for read in (lambda: kit.deployment("gone"),
                     lambda: kit.core.read_namespaced_service_account("gone-gateway", kit.ns),
                     lambda: kit.rbac.read_namespaced_role("gone-gateway", kit.ns),
                     lambda: kit.rbac.read_namespaced_role_binding("gone-gateway", kit.ns)):
            try:
                read()
                return False
            except ApiException as exc:
                if exc.status != 404:
                    raise
        return True

    wait_for(all_gone, 60, "the garbage collector to remove every child")


def _apply_count(op: Operator) -> float:
    return sum(v for k, v in op.metrics().items()
               if k.startswith("switchboard_operator_api_requests_total")
               and 'component="operator"' in k and 'verb="PATCH"' in k)


def test_children_deleted_or_edited_by_hand_come_back(kit: Kit, operator: Operator) -> None:
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("heal"))
    wait_for(lambda: kit.status("heal").get("observedGeneration") == 1, 30, "reconciled")
    leases = client.CoordinationV1Api(kit.api)
    reads = {
        "ServiceAccount": lambda: kit.core.read_namespaced_service_account("heal-gateway",
                                                                           kit.ns),
        "Role": lambda: kit.rbac.read_namespaced_role("heal-gateway", kit.ns),
        "RoleBinding": lambda: kit.rbac.read_namespaced_role_binding("heal-gateway", kit.ns),
        "Lease": lambda: leases.read_namespaced_lease("heal-gateway", kit.ns),
        "Deployment": lambda: kit.deployment("heal"),
    }
    deletes = {
        "ServiceAccount": lambda: kit.core.delete_namespaced_service_account("heal-gateway",
                                                                             kit.ns),
        "Role": lambda: kit.rbac.delete_namespaced_role("heal-gateway", kit.ns),
        "RoleBinding": lambda: kit.rbac.delete_namespaced_role_binding("heal-gateway", kit.ns),
        "Lease": lambda: leases.delete_namespaced_lease("heal-gateway", kit.ns),
        "Deployment": lambda: kit.apps.delete_namespaced_deployment("heal-gateway", kit.ns),
    }

    def recreated(kind: str, old_uid: str) -> Any:
        try:
            obj = reads[kind]()
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj if obj.metadata.uid != old_uid else None

    for kind in ("ServiceAccount", "Role", "RoleBinding", "Lease", "Deployment"):
        old = reads[kind]()
        deletes[kind]()
        new = wait_for(lambda k=kind, u=old.metadata.uid: recreated(k, u), 5,
                       f"the {kind} to be recreated")
        (ref,) = new.metadata.owner_references
        assert ref.kind == "PlatformConnection" and ref.name == "heal"

    # Drift: a Role widened by hand is put back (rules are one atomic list for apply).
    kit.rbac.patch_namespaced_role("heal-gateway", kit.ns, [
        {"op": "add", "path": "/rules/-",
         "value": {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}}])
    wait_for(lambda: not any("secrets" in r.resources
                             for r in kit.rbac.read_namespaced_role("heal-gateway", kit.ns).rules),
             5, "the Role's rules to be restored")
    # Our label removed from the RoleBinding (it drops out of the watch): put back.
    kit.rbac.patch_namespaced_role_binding("heal-gateway", kit.ns, [
        {"op": "remove", "path": "/metadata/labels/app.kubernetes.io~1managed-by"}])
    wait_for(lambda: (kit.rbac.read_namespaced_role_binding("heal-gateway", kit.ns)
                      .metadata.labels.get("app.kubernetes.io/managed-by")
                      == "switchboard-operator"), 5, "the RoleBinding's label to be restored")
    # The same for the poller Lease (watched by label on the server: it arrives as deleted).
    leases.patch_namespaced_lease("heal-gateway", kit.ns, [
        {"op": "remove", "path": "/metadata/labels/app.kubernetes.io~1managed-by"}])
    wait_for(lambda: (leases.read_namespaced_lease("heal-gateway", kit.ns)
                      .metadata.labels.get("app.kubernetes.io/managed-by")
                      == "switchboard-operator"), 5, "the Lease's label to be restored")

    # Settled, nothing more is applied: changes that are not ours cost no request.
    before = wait_for(lambda: ((n := _apply_count(operator)) == _apply_count(operator) and n)
                      or None, 10, "settling")
    kit.core.patch_namespaced_service_account("heal-gateway", kit.ns, {
        "metadata": {"labels": {"someone-else": "x"}, "annotations": {"note": "hi"}}})
    try:
        wait_for(lambda: _apply_count(operator) != before, 3, "any apply")
    except TimeoutError:
        pass
    assert _apply_count(operator) == before


def test_rolebinding_bound_to_another_role_is_recreated(
        kit: Kit, start_operator: Callable[..., Operator]) -> None:
    """roleRef is immutable, so an apply cannot fix it: the operator deletes and recreates."""
    op = start_operator("first")
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("rebind"))
    wait_for(lambda: kit.status("rebind").get("observedGeneration") == 1, 30, "reconciled")
    op.stop()
    old = kit.rbac.read_namespaced_role_binding("rebind-gateway", kit.ns)
    kit.rbac.delete_namespaced_role_binding("rebind-gateway", kit.ns)
    kit.rbac.create_namespaced_role_binding(kit.ns, client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="rebind-gateway"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole",
                                  name="view"),
        subjects=old.subjects))

    start_operator("second")
    new = wait_for(lambda: (b := kit.rbac.read_namespaced_role_binding(
        "rebind-gateway", kit.ns)).role_ref.kind == "Role" and b, 15, "roleRef restored")
    assert new.role_ref.name == "rebind-gateway" and new.metadata.uid != old.metadata.uid
    (ref,) = new.metadata.owner_references
    assert ref.kind == "PlatformConnection" and ref.name == "rebind"
