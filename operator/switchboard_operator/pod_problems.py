"""Why a gateway pod does not start, read from the pod's own status. Pure: no I/O.

The operator does not watch pods (least privilege: a list when needed is enough). It lists a
connection's pods only while the gateway has not reported and its Deployment has no available
pod; a container stuck waiting (an image that does not exist, an env too large to exec, a
missing ConfigMap) or crash-looping before its first report then shows in Ready's message and
a Warning Event, instead of "waiting for the first status report" forever.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# Waiting reasons of a container that is simply on its way.
STARTING = frozenset({"ContainerCreating", "PodInitializing"})
MAX_MESSAGE = 300


def problem(pods: Iterable[Mapping[str, Any]]) -> str | None:
    """The first pod's reason for not running (``pod P: container C: Reason: message``), or
    None when every pod is starting normally or running."""
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if meta.get("deletionTimestamp"):
            continue
        name = meta.get("name", "?")
        for c in status.get("containerStatuses") or []:
            waiting = (c.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if not reason or reason in STARTING:
                continue
            text = f"pod {name}: container {c.get('name')}: {reason}"
            detail = waiting.get("message") or _last_exit(c)
            return _bounded(f"{text}: {detail}" if detail else text)
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" \
                    and cond.get("reason"):
                return _bounded(f"pod {name}: {cond['reason']}: {cond.get('message') or ''}"
                                .rstrip(": "))
    return None


def _last_exit(container: Mapping[str, Any]) -> str:
    done = (container.get("lastState") or {}).get("terminated") or {}
    if not done:
        return ""
    return f"last exit code {done.get('exitCode')} ({done.get('reason') or 'terminated'})"


def _bounded(text: str) -> str:
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 1] + "…"
