"""The one exponential back-off of gateway and operator. Pure.

``doubling(initial, n, cap)`` is ``min(initial * 2**(n - 1), cap)`` for the n-th attempt
(n >= 1), computed without the power: ``2.0 ** 1024`` raises OverflowError, and attempt counts
come from user input (``maxAttempts``) or from long outages.
"""

from __future__ import annotations


def doubling(initial: float, n: int, cap: float) -> float:
    """The delay before attempt ``n`` (from 1): ``initial``, doubled per attempt, at most
    ``cap`` (a cap below ``initial`` caps the first delay too)."""
    if n < 1:
        raise ValueError(f"attempts count from 1, got {n}")
    if initial <= 0 or cap <= 0:
        raise ValueError(f"delays must be positive, got initial={initial} cap={cap}")
    delay = initial
    for _ in range(n - 1):  # stops at the cap: at most log2(cap / initial) steps
        if delay >= cap:
            break
        delay *= 2
    return min(delay, cap)
