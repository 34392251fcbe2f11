"""A leader cut off from the API server stops acting before another replica takes over.

Replica A reaches the API server through a proxy the test freezes (a stalled network: what A
sent meanwhile is delivered when it thaws); replica B is connected directly. A restart of the
connection falls due while A is cut off. The API server's audit log says who wrote what and
when it arrived: no write of A may arrive after B took the Lease (the overlap, goal 0), and the
restart happens exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from opkit import Kit, Operator, secret, telegram_conn

from switchboard_testkit.cluster import Cluster
from switchboard_testkit.controlplane import wait_for
from switchboard_testkit.freeze_proxy import Proxy

# Back-off of the restart that falls due while A is cut off: past A's renew deadline (10 s
# after its last renewal, at most 2 s before the freeze), before B may take over (15 s after
# it last saw A renew).
RESTART_DELAY = 13


@pytest.fixture
def proxy(cluster: Cluster) -> Iterator[Proxy]:
    port = urlsplit(cluster.plane.state.server if cluster.plane.state else "").port
    assert port, "the control plane's address"
    p = Proxy(port, cluster.workdir).start()
    yield p
    p.stop()


def _through(proxy: Proxy, kubeconfig: str, workdir: Path) -> str:
    config = yaml.safe_load(Path(kubeconfig).read_text())
    for entry in config["clusters"]:
        entry["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    path = workdir / f"proxied-{proxy.port}.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return str(path)


def _received(event: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(event["requestReceivedTimestamp"]).replace("Z", "+00:00"))


def _writes_by(cluster: Cluster, identity: str, namespace: str) -> list[dict[str, object]]:
    return [e for e in cluster.plane.audit_writes()
            if f"({identity})" in str(e.get("userAgent"))
            and (e.get("objectRef") or {}).get("namespace") == namespace]  # type: ignore[union-attr]


def _lease(event: dict[str, object]) -> bool:
    return (event.get("objectRef") or {}).get("resource") == "leases"  # type: ignore[union-attr]


def test_a_leader_cut_off_stops_acting_before_the_next_one_starts(
        kit: Kit, cluster: Cluster, proxy: Proxy, operator_env: dict[str, str],
        start_operator: Callable[..., Operator]) -> None:
    a = start_operator("a", env={**operator_env, "KUBECONFIG": _through(
        proxy, operator_env["KUBECONFIG"], cluster.workdir)})
    wait_for(lambda: a.metric("switchboard_leader") == 1, 30, "A to lead")
    b = start_operator("b")
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("cut", restartPolicy={"initialDelaySeconds": RESTART_DELAY}))
    wait_for(lambda: kit.status("cut").get("observedGeneration") == 1, 30, "A reconciles")
    pod = kit.one_pod("cut").metadata.name
    gw = kit.gateway_client("cut")

    kit.fatal(gw, "cut", pod)
    wait_for(lambda: kit.status("cut").get("nextRestartTime"), 10, "A schedules the restart")
    proxy.freeze()
    wait_for(lambda: b.metric("switchboard_leader") == 1, 40, "B to take over")
    # A stopped leading on its own, before B could take over, without hearing from the API.
    a_leads_too = a.metric("switchboard_leader") == 1
    wait_for(lambda: kit.status("cut").get("restarts") == 1, 20, "B restarts the gateway")
    gets = a.metric("switchboard_operator_api_requests_total", verb="GET", code="200")
    proxy.thaw()
    # A's requests flow again (its follower's Lease reads): what it sent meanwhile has landed.
    wait_for(lambda: a.metric("switchboard_operator_api_requests_total", verb="GET",
                              code="200") > gets, 20, "A to reach the API again")
    wait_for(lambda: a.metric("switchboard_operator_api_requests_total", verb="GET",
                              code="200") > gets + 1, 20, "A's next request")

    b_writes = _writes_by(cluster, b.identity, kit.ns)
    took_over = min(_received(e) for e in b_writes if _lease(e))
    a_acts = [e for e in _writes_by(cluster, a.identity, kit.ns) if not _lease(e)]
    late = [e for e in a_acts if _received(e) >= took_over]
    last_act = max(_received(e) for e in a_acts)
    overlap = max(0.0, (last_act - took_over).total_seconds())
    print(f"\nA's last write {last_act.isoformat()}, B took the Lease {took_over.isoformat()}: "
          f"overlap {overlap:.3f}s, gap {(took_over - last_act).total_seconds():.3f}s")
    assert not a_leads_too, "A still believed it led when B took over"
    assert not late, "A wrote after B took over: " + ", ".join(
        f"{e['verb']} {(e.get('objectRef') or {}).get('resource')} at "  # type: ignore[union-attr]
        f"{e['requestReceivedTimestamp']}" for e in late)
    assert kit.status("cut")["restarts"] == 1
    deletions = [e for e in cluster.plane.audit_writes()
                 if e.get("verb") in ("delete", "deletecollection") and "switchboard-operator"
                 in str(e.get("userAgent")) and (e.get("objectRef") or {}).get(  # type: ignore[union-attr]
                     "resource") == "pods" and (e.get("objectRef") or {}).get(  # type: ignore[union-attr]
                     "namespace") == kit.ns]
    assert len(deletions) == 1, [e.get("userAgent") for e in deletions]
