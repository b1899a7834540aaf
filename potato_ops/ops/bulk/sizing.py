"""Users per transaction, adapted toward a target duration (``BulkConfig.batch_seconds``).

After each transaction the size moves toward ``users * target / seconds``: down at once (a
batch that ran long held its locks too long), up by at most half again per transaction (one
quick batch of short histories must not make the next one huge), always within the bounds.
One sizer per runner, shared by its worker threads.
"""

from __future__ import annotations

import threading

GROWTH = 1.5  # the most a size grows from one transaction to the next


class BatchSizer:
    """The number of users the next transaction takes."""

    def __init__(self, start: int, lo: int, hi: int, target_seconds: float) -> None:
        self.lo, self.hi, self.target = lo, hi, target_seconds
        self._size = min(max(start, lo), hi)
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """Return the size the next transaction should take."""
        with self._lock:
            return self._size

    def observe(self, users: int, seconds: float) -> int:
        """Learn from a transaction of ``users`` that took ``seconds``; return the next size."""
        with self._lock:
            if users > 0:
                ideal = users * self.target / seconds if seconds > 0 else float(self.hi)
                grown = max(int(self._size * GROWTH), self._size + 1)
                self._size = max(self.lo, min(self.hi, grown, int(ideal)))
            return self._size
