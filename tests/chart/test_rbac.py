"""The chart's RBAC grants exactly the permissions operator/README.md lists, no more, no less."""

from __future__ import annotations

import re
from typing import Any

from test_chart import rendered

from switchboard_testkit.binaries import REPO
from switchboard_testkit.cluster import Cluster

Grant = tuple[str, str, str, str]  # scope, API group, resource, verb

ROW = re.compile(r"^\| (served|cluster|release namespace) \| ([^|]+) \| ([^|]+) \| ([^|]+) \|")


def documented() -> set[Grant]:
    text = (REPO / "operator" / "README.md").read_text()
    out: set[Grant] = set()
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            scope, group, resource, verbs = (g.strip() for g in m.groups())
            group = "" if group == "core" else group
            out |= {(scope, group, resource, v.strip()) for v in verbs.split(",")}
    return out


def granted(docs: list[dict[str, Any]], release_ns: str) -> set[Grant]:
    """What the operator's ServiceAccount gets from the rendered Roles and ClusterRoles."""
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    roles = {(d["kind"], d["metadata"]["name"]): d for d in docs
             if d["kind"] in ("Role", "ClusterRole")}
    out: set[Grant] = set()
    for binding in docs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s["name"] == sa for s in binding["subjects"]):
            continue
        role = roles[(binding["roleRef"]["kind"], binding["roleRef"]["name"])]
        if binding["kind"] == "ClusterRoleBinding":
            scope = "cluster"
        elif binding["metadata"]["namespace"] == release_ns and role["kind"] == "Role":
            scope = "release namespace"
        else:
            scope = "served"
        for rule in role["rules"]:
            out |= {(scope, g, r, v) for g in rule["apiGroups"] for r in rule["resources"]
                    for v in rule["verbs"]}
    return out


def test_chart_rbac_is_exactly_the_documented_list(cluster: Cluster) -> None:
    want = documented()
    assert len(want) > 20, "the README table was not found"
    # Cluster-wide mode: the operator's ClusterRole is bound cluster-wide, so its "served"
    # rules show as cluster scope there; compare the namespaced mode, where each is apart.
    docs = rendered(cluster, "--set", "watchNamespaces={team-a}")
    got = granted(docs, "switchboard-system")
    assert got == want, (f"granted, not documented: {sorted(got - want)}; "
                         f"documented, not granted: {sorted(want - got)}")
    # Cluster-wide mode grants the same rules, only everywhere.
    wide = granted(rendered(cluster), "switchboard-system")
    assert {g[1:] for g in wide} == {g[1:] for g in want}


def test_aggregated_roles_for_namespace_users(cluster: Cluster) -> None:
    roles = {d["metadata"]["name"]: d for d in rendered(cluster) if d["kind"] == "ClusterRole"}
    edit, view = roles["sb-switchboard-edit"], roles["sb-switchboard-view"]
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert {"create", "delete"} <= set(edit["rules"][0]["verbs"])
    assert set(view["rules"][0]["verbs"]) == {"get", "list", "watch"}
