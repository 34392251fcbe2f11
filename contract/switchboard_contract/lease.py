"""coordination.k8s.io/v1 Lease records: who holds one, and what to write to take or give one
up. Pure; shared by the operator's leader election and the gateway's poller fence.

Expiry is judged as client-go does: by the local monotonic clock, from when this process last
saw the record (holder, renewTime) change, never by comparing renewTime with the local wall
clock (clocks of two machines disagree; a monotonic interval does not depend on either).
renewTime and acquireTime are written for people, from the wall clock the caller passes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

MICRO_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"  # metav1.MicroTime


def micro_time(at: datetime) -> str:
    return at.strftime(MICRO_TIME)


class LeaseObserver:
    """Remembers when the record of one Lease last changed, to judge its expiry."""

    def __init__(self) -> None:
        self._record: tuple[str, str] | None = None
        self._changed_at = 0.0

    def live_holder(self, spec: Mapping[str, Any], identity: str, now: float,
                    default_seconds: int) -> str | None:
        """The other identity that holds a live lease, or None when ``identity`` may take it
        (free, released, expired, or already ours). ``now`` is monotonic seconds."""
        holder = str(spec.get("holderIdentity") or "")
        record = (holder, str(spec.get("renewTime") or ""))
        if record != self._record:
            self._record, self._changed_at = record, now
        duration = int(spec.get("leaseDurationSeconds") or default_seconds)
        if holder and holder != identity and now - self._changed_at < duration:
            return holder
        return None


def claim(spec: Mapping[str, Any] | None, identity: str, seconds: int,
          wall: datetime) -> dict[str, Any]:
    """The spec that takes (or renews) the lease for ``identity``; ``spec`` None is a new
    Lease. A change of holder counts a transition and restarts acquireTime."""
    now = micro_time(wall)
    spec = spec or {}
    ours = spec.get("holderIdentity") == identity
    transitions = int(spec.get("leaseTransitions") or 0)
    if spec and not ours:
        transitions += 1
    return {"holderIdentity": identity, "leaseDurationSeconds": seconds,
            "acquireTime": (spec.get("acquireTime") if ours else None) or now,
            "renewTime": now, "leaseTransitions": transitions}


def release(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec that hands the lease over at once (client-go's ReleaseOnCancel): no holder,
    and a duration of 1 s for readers that only look at the times."""
    return {**spec, "holderIdentity": "", "leaseDurationSeconds": 1}
