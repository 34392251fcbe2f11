"""The real node's own network and mount namespaces, as kind's node container has them.

A holder process (`unshare --net --mount`, then sleep) keeps both namespaces alive; every
component of the real-node cluster runs inside them through `nsenter`. Inside: loopback, a veth
whose end `node0` carries the node address with the default route through it (so nothing leaves:
the peer end goes nowhere), a private /run, overlays over /var/lib and /var/log (the kubelet and
CNI write there whatever their config says), and a sysfs of the new network namespace. Nothing
of it appears on the host; killing the holder and its members undoes it all.

`enter()` moves only the calling thread into the network namespace (setns(2) is per thread):
a socket made there stays there, so one process can listen on host loopback and inside the node.
Python's os.setns arrived in 3.12; on 3.11 it is libc's, through ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

CLONE_NEWNET = 0x40000000
NODE_IP = "10.240.0.2"
NODE_PREFIX = 24
GATEWAY_IP = "10.240.0.1"  # the default route's next hop: the veth peer, which goes nowhere

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def enter(holder_pid: int) -> Iterator[None]:
    """Run the block's socket calls (this thread only) in the holder's network namespace."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/proc/{holder_pid}/ns/net", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)


def nsenter(holder_pid: int) -> list[str]:
    """The argv prefix that runs a command in the holder's network and mount namespaces."""
    return ["nsenter", f"--target={holder_pid}", "--net", "--mount", "--"]


SETUP = r"""
set -eu
ip link set lo up
ip link add node0 type veth peer name node0-peer
ip link set node0-peer up
ip addr add {node_ip}/{prefix} dev node0
ip link set node0 up
ip route add default via {gateway} dev node0 onlink
sysctl -q -w net.ipv4.ip_forward=1 net.ipv4.conf.all.route_localnet=1
# A private /run first: the cgroup tree waits there while /sys is replaced.
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/.cgroup-aside
mount --move /sys/fs/cgroup /run/.cgroup-aside
mount -t sysfs sysfs /sys
mount --move /run/.cgroup-aside /sys/fs/cgroup
rmdir /run/.cgroup-aside
echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || true
for d in lib log; do
  mkdir -p {work}/overlay/$d/upper {work}/overlay/$d/work
  mount -t overlay overlay \
    -o lowerdir=/var/$d,upperdir={work}/overlay/$d/upper,workdir={work}/overlay/$d/work /var/$d
done
"""


def start_holder(workdir: Path, log: Path) -> int:
    """Start the namespace holder, set its namespaces up, return its PID."""
    out = open(log, "ab")
    proc = subprocess.Popen(
        ["unshare", "--net", "--mount", "--propagation", "private", "--", "sleep", "infinity"],
        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    # unshare execs sleep once the namespaces exist: wait for that before joining them.
    from switchboard_testkit.controlplane import wait_for  # controlplane imports this module

    wait_for(lambda: Path(f"/proc/{proc.pid}/exe").resolve().name == "sleep", 10,
             "the node's namespace holder")
    script = SETUP.format(node_ip=NODE_IP, prefix=NODE_PREFIX, gateway=GATEWAY_IP,
                          work=workdir)
    done = subprocess.run([*nsenter(proc.pid), "sh", "-c", script], capture_output=True,
                          text=True)
    if done.returncode != 0:
        proc.kill()
        raise RuntimeError(f"setting up the node's namespaces failed: {done.stderr.strip()}")
    return proc.pid


def listen(holder_pid: int, host: str, port: int) -> socket.socket:
    """A listening TCP socket inside the node's network namespace (port 0: a free one)."""
    with enter(holder_pid):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock
