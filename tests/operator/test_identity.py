"""The operator runs under a uid with no passwd entry (a container's 65532), and its /healthz and
/metrics answer on every address it binds (the pod IP for the kubelet, 127.0.0.1 for
`kubectl port-forward`)."""

from __future__ import annotations

import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable

import pytest
from opkit import Kit, Operator, secret, telegram_conn

from switchboard_testkit.controlplane import wait_for

# What getpass.getuser() reads before it falls back to the user database.
USER_VARIABLES = ("LOGNAME", "USER", "LNAME", "USERNAME", "HOME", "POD_NAME")
# Stands in for a pod IP next to the pod's loopback.
POD_IP = "127.0.0.3"


def uid_without_passwd_entry() -> int:
    for uid in (65532, *range(61000, 62000)):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise AssertionError("every candidate uid has a passwd entry")


def as_uid(uid: int) -> tuple[str, ...]:
    """A command prefix that runs a process as ``uid`` in a user namespace of its own: the
    process sees that uid (and the host's passwd, which lacks it), while files keep the
    access of the user who runs the tests (the interpreter may live in a private home)."""
    prefix = ("unshare", "--user", f"--map-user={uid}", f"--map-group={uid}")
    if shutil.which("unshare") is None or subprocess.run(
            [*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("user namespaces are not available here")
    return prefix


def test_operator_acts_under_a_uid_without_passwd_entry_and_answers_on_each_address(
        kit: Kit, start_operator: Callable[..., Operator], operator_env: dict[str, str]
) -> None:
    uid = uid_without_passwd_entry()
    env = {k: v for k, v in operator_env.items() if k not in USER_VARIABLES}

    # The condition of a container run as 65532: the user database does not know the uid.
    probe = subprocess.run([*as_uid(uid), sys.executable, "-c",
                            "import getpass; getpass.getuser()"], env=env,
                           capture_output=True, text=True)
    assert probe.returncode != 0 and "uid not found" in probe.stderr, probe.stderr

    # No --identity: the operator must find one without the user database.
    op = start_operator("nopasswd", env=env, prefix=as_uid(uid), identity=None,
                        addresses=(POD_IP, "127.0.0.1"))

    for address in (POD_IP, "127.0.0.1"):
        assert op.healthy(address), address
        assert "switchboard_leader" in {k.split("{")[0] for k in op.metrics(address)}, address
    # It acts, not only answers: a connection gets its gateway Deployment.
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("bot"))
    wait_for(lambda: kit.deployment("bot"), 30, "the gateway Deployment")
    assert "KeyError" not in op.tail(200)
