"""When a node daemon rejoins its head: exponential backoff for incarnations that end quickly.

A node incarnation ends when the head declares it dead (fenced) or its
connection to the head is lost; the daemon then rejoins as a new node
(daemon_head_link.py).  After a long life that is right at once.  But if
incarnations keep ending within seconds of joining -- the head drops the
connection on some message of this node, a replica host whose chain keeps
failing, a head too overloaded to hear heartbeats -- an immediate rejoin is
a tight loop: each incarnation costs the head a node's worth of state and
log lines (one such loop rejoined 20,694 times in 95 minutes).

The rule (a pure policy, no clock and no I/O: times come in as ``now``,
randomness from the ``rng`` given, so tests drive it exactly):

* an incarnation that lived at least ``stable_after`` seconds resets the
  streak: the next join is at once (``delay`` 0);
* the n-th incarnation in a row that ended sooner waits
  ``min(cap, base * 2**(n-1))`` seconds, jittered down to half of that
  ("equal jitter": nodes that lost the head together do not come back
  together, and none waits less than half its step);
* what to log: the first quick end of a streak (``warn``), then one line
  every ``report_every`` seconds with the count so far -- never a line per
  attempt.

How long a node keeps retrying an unreachable head (``--head-wait``, and
"without limit" for a replica host) is not this policy's business: the
delay comes first, then the usual retries.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

__all__ = ["RejoinBackoff", "RejoinPlan"]


@dataclass(frozen=True, slots=True)
class RejoinPlan:
    """What to do after an incarnation ended."""

    delay: float  # seconds to wait before joining again (0: at once)
    quick: int  # incarnations in a row that ended within ``stable_after`` (0: this one lived long)
    warn: bool  # log the streak now (its first quick end, then every ``report_every`` s)
    lived: float  # how long the incarnation that ended lived (inf: it never joined)


@dataclass(slots=True)
class RejoinBackoff:
    """Exponential backoff with jitter for quickly ending incarnations; see the module docstring."""

    base: float = 0.5
    cap: float = 30.0
    stable_after: float = 10.0
    report_every: float = 60.0
    rng: random.Random = field(default_factory=random.Random)
    quick: int = 0
    joined_at: float | None = None
    last_report: float = -math.inf

    def __post_init__(self) -> None:
        if not (0 < self.base <= self.cap):
            raise ValueError(f"RejoinBackoff: need 0 < base <= cap, got base={self.base!r}, cap={self.cap!r}")
        if not (self.stable_after > 0 and self.report_every > 0):
            raise ValueError(f"RejoinBackoff: stable_after ({self.stable_after!r}) and report_every "
                             f"({self.report_every!r}) must be > 0 seconds")

    def joined(self, now: float) -> None:
        """An incarnation began (the head accepted its connection)."""
        self.joined_at = now

    def ended(self, now: float) -> RejoinPlan:
        """The current incarnation ended at ``now``: how long to wait before
        the next, and whether to log it."""
        lived = math.inf if self.joined_at is None else max(0.0, now - self.joined_at)
        self.joined_at = None
        if lived >= self.stable_after:
            self.quick = 0
            self.last_report = -math.inf
            return RejoinPlan(0.0, 0, False, lived)
        self.quick += 1
        step = min(self.cap, self.base * 2.0 ** min(self.quick - 1, 64))
        delay = step / 2 + self.rng.uniform(0.0, step / 2)
        warn = self.quick == 1 or now - self.last_report >= self.report_every
        if warn:
            self.last_report = now
        return RejoinPlan(delay, self.quick, warn, lived)
