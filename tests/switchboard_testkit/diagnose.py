"""Why a pod of the local cluster does not come up, in the words a user needs: its waiting or
termination reason and the last lines its container wrote (the local node keeps them under
<workdir>/pods/<namespace>_<pod>/<container>.log, the real node's kubelet under
<workdir>/pod-logs/<namespace>_<pod>_<uid>/<container>/<restart>.log in the CRI format)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from kubernetes import client

from switchboard_testkit.localnode import pod_dir

CRASH_RESTARTS = 2  # a container that restarted this often is crash-looping, not starting


class PodCrashed(RuntimeError):
    """A pod crash-loops while we wait for something that needs it."""


def crashing(core: client.CoreV1Api, namespaces: Sequence[str]) -> list[client.V1Pod]:
    out = []
    for ns in namespaces:
        for pod in core.list_namespaced_pod(ns).items:
            statuses = (pod.status and pod.status.container_statuses) or []
            if any((s.restart_count or 0) >= CRASH_RESTARTS for s in statuses):
                out.append(pod)
    return out


def describe(pod: client.V1Pod, workdir: Path, lines: int = 15) -> str:
    ns, name = pod.metadata.namespace, pod.metadata.name
    text = [f"pod {ns}/{name}:"]
    for s in (pod.status and pod.status.container_statuses) or []:
        waiting = s.state and s.state.waiting
        last = s.last_state and s.last_state.terminated
        text.append(f"  container {s.name}: restarts {s.restart_count}"
                    + (f", waiting: {waiting.reason}" if waiting else "")
                    + (f", last exit code {last.exit_code} ({last.reason})" if last else ""))
        tail = container_log(workdir, ns, name, s.name)[-lines:]
        text += [f"  | {line}" for line in tail] or ["  (no log lines)"]
    return "\n".join(text)


def container_log(workdir: Path, namespace: str, pod: str, container: str) -> list[str]:
    """The lines a container wrote, from the local or the real node's log files."""
    local = pod_dir(workdir, namespace, pod) / f"{container}.log"
    if local.exists():
        return local.read_text(errors="replace").splitlines()
    runs = sorted((workdir / "pod-logs").glob(f"{namespace}_{pod}_*/{container}/*.log"),
                  key=lambda p: p.stat().st_mtime)
    if not runs:
        return []
    # CRI lines: "<time> <stream> <P|F> <text>".
    return [line.split(" ", 3)[-1] for line in
            runs[-1].read_text(errors="replace").splitlines()]


def run_watching(cmd: list[str], *, env: dict[str, str], core: client.CoreV1Api,
                 namespaces: Sequence[str], workdir: Path,
                 timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (e.g. `helm --wait`) but stop it, with the pods' own account, as soon as a
    pod in ``namespaces`` crash-loops: waiting out the command's timeout says nothing."""
    proc = subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while True:
        try:
            out, err = proc.communicate(timeout=1)
            if proc.returncode:
                raise subprocess.CalledProcessError(proc.returncode, cmd, out, err)
            return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
        except subprocess.TimeoutExpired:
            pass
        bad = crashing(core, namespaces)
        if bad or time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            if bad:
                raise PodCrashed("a pod crash-loops:\n" + "\n".join(describe(p, workdir)
                                                                     for p in bad))
            raise subprocess.TimeoutExpired(cmd, timeout)
