"""`switchboard-operator`: run the kopf operator with the Switchboard handlers."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import timedelta

import kopf

from switchboard_operator import __version__, health, metrics
from switchboard_operator.leader import LEASE_SECONDS, RENEW_DEADLINE, RETRY_SECONDS
from switchboard_operator.policy import Policy, PolicyError
from switchboard_operator.reconcile import UNAVAILABLE_GRACE


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="switchboard-operator",
        description="Turns PlatformConnection resources into chat-bot gateway Deployments, "
                    "restarts gateways that give up (with back-off and a circuit breaker).")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", dest="namespaces", default=[],
                       metavar="NS", help="serve only this namespace (repeatable; globs allowed)")
    scope.add_argument("--all-namespaces", "-A", action="store_true",
                       help="serve all namespaces (the default)")
    p.add_argument("--metrics-port", type=int, default=9090,
                   help="port of the Prometheus /metrics endpoint (0: off; default 9090)")
    p.add_argument("--metrics-address", action="append", dest="metrics_addresses",
                   metavar="ADDRESS",
                   help="address the /metrics endpoint binds to (repeatable; default 0.0.0.0)")
    p.add_argument("--health-port", type=int, default=8080,
                   help="port of the liveness endpoint /healthz (0: off; default 8080)")
    p.add_argument("--health-address", action="append", dest="health_addresses",
                   metavar="ADDRESS",
                   help="address the liveness endpoint binds to (repeatable; default 0.0.0.0)")
    elect = p.add_mutually_exclusive_group()
    elect.add_argument("--peering", dest="leader_election", action="store_true", default=True,
                       help="elect one acting replica with a coordination.k8s.io Lease "
                            "(default)")
    elect.add_argument("--standalone", dest="leader_election", action="store_false",
                       help="no leader election: this process always acts (one replica only)")
    p.add_argument("--lease-namespace",
                   default=os.environ.get("POD_NAMESPACE") or None,
                   help="namespace of the leader-election Lease (default: $POD_NAMESPACE, "
                        "else the first --namespace, else 'default')")
    p.add_argument("--lease-name", default="switchboard-operator",
                   help="name of the leader-election Lease (default switchboard-operator)")
    p.add_argument("--lease-duration", type=int, default=LEASE_SECONDS, metavar="SECONDS",
                   help="how long another replica waits for an unrenewed Lease before taking "
                        f"over (default {LEASE_SECONDS})")
    p.add_argument("--renew-deadline", type=float, default=RENEW_DEADLINE, metavar="SECONDS",
                   help="the leader stops acting when it has not renewed for this long; "
                        f"less than --lease-duration (default {RENEW_DEADLINE:g})")
    p.add_argument("--retry-period", type=float, default=RETRY_SECONDS, metavar="SECONDS",
                   help=f"how often the Lease is renewed or tried (default {RETRY_SECONDS:g})")
    p.add_argument("--identity", default=None,
                   help="identity of this replica, in the Lease and in kopf (default: "
                        "$POD_NAME, else hostname-pid-random)")
    p.add_argument("--policy", default=os.environ.get("SWITCHBOARD_POLICY") or "{}",
                   metavar="JSON",
                   help="the cluster admin's policy for PlatformConnections, as JSON (keys: "
                        "apiHosts, insecureAPIHosts, images, allowEnvValueFrom, "
                        "allowTolerations, allowNodeSelector, webhookHosts, "
                        "insecureWebhookHosts, allowIngress, ingressAnnotations; default: only "
                        "the official API hosts over https, only the operator's gateway image, "
                        "no valueFrom, tolerations or nodeSelector, webhooks to any host over "
                        "https, Ingresses with cert-manager.io/* annotations only; env "
                        "SWITCHBOARD_POLICY)")
    p.add_argument("--unavailable-grace", type=float, default=UNAVAILABLE_GRACE,
                   metavar="SECONDS",
                   help="how long a gateway's 'connected' report is trusted while its "
                        "Deployment has no available pod (default %(default)s)")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = p.parse_args(argv)
    if not 0 < args.retry_period < args.renew_deadline < args.lease_duration:
        p.error("need 0 < --retry-period < --renew-deadline < --lease-duration")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    kopf.configure(verbose=args.verbose, log_prefix=True)
    if not args.verbose:
        # kopf logs every watch event's handler at INFO otherwise; ours is the useful log.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # Imported here so that `--help` does not register handlers or touch the cluster.
    from switchboard_operator import handlers

    handlers.OPTIONS.leader_election = args.leader_election
    literal = [ns for ns in args.namespaces if not any(c in ns for c in "*?[]!")]
    handlers.OPTIONS.lease_namespace = args.lease_namespace or (
        literal[0] if literal else "default")
    handlers.OPTIONS.lease_name = args.lease_name
    handlers.OPTIONS.lease_seconds = args.lease_duration
    handlers.OPTIONS.renew_deadline = args.renew_deadline
    handlers.OPTIONS.retry_seconds = args.retry_period
    if args.identity:
        handlers.OPTIONS.identity = args.identity
    try:
        handlers.CONTROLLER.policy = Policy.from_json(args.policy)
    except PolicyError as exc:
        sys.exit(f"switchboard-operator: {exc}")
    handlers.CONTROLLER.unavailable_grace = timedelta(seconds=args.unavailable_grace)
    handlers.OPTIONS.namespaces = list(args.namespaces)
    handlers.OPTIONS.health_port = args.health_port
    handlers.OPTIONS.health_addresses = args.health_addresses or ["0.0.0.0"]
    try:
        health.check_free(args.health_port, handlers.OPTIONS.health_addresses)
    except OSError as exc:
        sys.exit(f"switchboard-operator: {exc.strerror} (choose another with --health-port)")
    for address in args.metrics_addresses or ["0.0.0.0"]:
        try:
            metrics.serve(args.metrics_port, address)
        except OSError as exc:
            sys.exit(f"switchboard-operator: cannot serve /metrics on "
                     f"{address}:{args.metrics_port}: {exc.strerror} (choose another with "
                     "--metrics-port)")
    kopf.run(
        standalone=True,  # no kopf peering: leader.py elects with a Lease
        clusterwide=not args.namespaces,
        namespaces=args.namespaces,
        # Given, so kopf never derives one from the user database (getpass.getuser() raises
        # KeyError for a uid without a passwd entry, as in a container run as 65532).
        identity=handlers.OPTIONS.identity,  # type: ignore[arg-type]
        # /healthz is ours (health.py): it binds several addresses.
        liveness_endpoint=None,
    )


if __name__ == "__main__":
    main()
