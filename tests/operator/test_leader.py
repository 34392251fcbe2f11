"""Two operator replicas: one acts; the other takes over when the leader dies. Idle costs."""

from __future__ import annotations

from collections.abc import Callable

from opkit import Kit, Operator, secret, telegram_conn

from switchboard_testkit.controlplane import wait_for


def _leader(*ops: Operator) -> Operator:
    def find() -> Operator | None:
        leading = [op for op in ops if op.metric("switchboard_leader") == 1]
        return leading[0] if len(leading) == 1 else None
    return wait_for(find, 30, "exactly one leader")  # type: ignore[return-value]


def test_two_operators_only_the_leader_acts_and_the_other_takes_over(
        kit: Kit, start_operator: Callable[..., Operator]) -> None:
    a, b = start_operator("a"), start_operator("b")
    leader = _leader(a, b)
    follower = b if leader is a else a
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("one"))
    wait_for(lambda: kit.status("one").get("observedGeneration") == 1, 30, "reconciled")

    assert leader.metric("switchboard_reconciles_total") > 0
    assert follower.metric("switchboard_reconciles_total") == 0
    assert follower.metric("switchboard_leader") == 0
    # The follower wrote nothing (its only requests are watches and Lease reads).
    writes = [v for k, v in follower.metrics().items()
              if k.startswith("switchboard_operator_api_requests_total")
              and 'component="operator"' in k
              and 'verb="GET"' not in k and 'verb="WATCH"' not in k]
    assert sum(writes) == 0

    leader.kill()  # SIGKILL: the Lease is not released; the follower waits for its expiry
    wait_for(lambda: follower.metric("switchboard_leader") == 1, 40, "the follower to lead")
    kit.create(telegram_conn("two"))
    wait_for(lambda: kit.status("two").get("observedGeneration") == 1, 30,
             "the new leader reconciles")
    assert follower.metric("switchboard_reconciles_total") > 0


def test_an_idle_connection_costs_no_api_requests(
        kit: Kit, start_operator: Callable[..., Operator]) -> None:
    op = start_operator("idle", "--standalone")  # no Lease renewals in the count
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("quiet"))
    gw = kit.gateway_client("quiet")
    kit.report(gw, "quiet", "connected", pod=kit.one_pod("quiet").metadata.name)
    kit.wait_ready("quiet", "True", "Connected")

    def writes() -> float:
        return sum(v for k, v in op.metrics().items()
                   if k.startswith("switchboard_operator_api_requests_total")
                   and 'verb="WATCH"' not in k)

    # Settled: the count stops moving (the last status write and its echo event).
    before = wait_for(lambda: ((w := writes()) == writes() and w) or None, 10, "settling")
    # A further gateway write that changes nothing the operator owns costs nothing either.
    kit.report(gw, "quiet", "connected", pod=kit.one_pod("quiet").metadata.name,
               since="2020-01-01T00:00:00Z")
    wait_for(lambda: kit.status("quiet")["stateSince"] == "2020-01-01T00:00:00Z", 10, "write")
    try:
        wait_for(lambda: writes() != before, 5, "any operator request")
    except TimeoutError:
        pass
    assert writes() == before
