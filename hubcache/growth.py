"""How many connections a parallel download (:mod:`hubcache.ranged`) should have.

FIRST at once (the single stream was network-bound), then twice as many while
the consumer waits for bytes, up to ``HUBCACHE_CONNECTIONS``, until a doubling
no longer raises the rate bytes arrive at by GAIN: a shared bottleneck gains
nothing from more connections, a per-flow cap about twice.
"""

from __future__ import annotations

import collections
import time
from typing import Deque, Optional, Tuple

FIRST = 4  # connections once a single stream turned out network-bound
TICK = 0.25  # seconds between two looks at the consumer's waits
STARVED = 0.3  # share of a tick spent waiting for bytes that calls for more connections
GAIN = 1.3  # how much more a doubling must bring for the next to be tried (per-flow caps: 2x)


class Growth:
    """Told of the consumer's waits and of the bytes that arrived; says when to
    add connections, and how many."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.growing = True  # False once more connections would not help (or were refused)
        self.waited = 0.0  # seconds the consumer waited for bytes since the last tick
        # Rates of arrival, not the consumer's (which waits on the head piece and
        # moves in bursts), over two ticks: one is too noisy on a lossy link.
        self._marks: Deque[Tuple[float, int]] = collections.deque([(time.monotonic(), 0)], maxlen=3)
        self._grew_at: Optional[float] = None  # the rate before the last doubling...
        self._ticks_since = 0  # ...and the ticks since

    def more(self, arrived: int, connections: int) -> Tuple[int, str]:
        """How many connections to add now that ``arrived`` bytes came in all,
        over ``connections``; and why, for the log ("" when nothing changed)."""
        now = time.monotonic()
        if now - self._marks[-1][0] < TICK:
            return 0, ""
        self._marks.append((now, arrived))
        starved = self.waited > STARVED * (now - self._marks[-2][0])
        self.waited = 0.0
        then, before = self._marks[0]
        rate = (arrived - before) / (now - then)
        if not self.growing or connections >= self.cap:
            return 0, ""
        if self._grew_at is not None:
            self._ticks_since += 1
            if self._ticks_since < 3:  # new connections ramp up: judge the two ticks after
                return 0, ""
            if rate < self._grew_at * GAIN:
                self.growing = False
                return 0, f"more did not raise the rate ({self._grew_at / 1e6:.1f} MB/s before, {rate / 1e6:.1f} after)"
        if not starved:
            return 0, ""
        self._grew_at, self._ticks_since = rate, 0
        return min(self.cap - connections, connections), f"at {rate / 1e6:.1f} MB/s"
