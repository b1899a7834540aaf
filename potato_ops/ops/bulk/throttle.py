"""The gate a bulk worker passes before it claims each batch: go, or why it must wait.

A worker asks ``Gate.wait_until_open`` before every claim. The gate looks, in this order, at:

1. the operation's pause flag (``potato-ops pause OPID``, in the ledger, so a worker on any
   host sees it): ``paused``;
2. the maintenance window (``BulkConfig.window``, on the injectable clock): ``waiting for
   window 01:00-05:00 UTC (opens in 3 h 12 min)``;
3. every standby's replay lag against ``max_replica_lag`` (``pg_stat_replication``):
   ``throttled: replica lag 6.1 MB > 1 MB``;
4. the server's active client sessions against ``max_active_sessions``: ``throttled: 40
   active sessions > 32``.

While any says wait, the worker claims nothing (so it holds no batch: another host's worker
could not take one over either), looks again every ``POLL_S`` and goes on by itself once the
gate opens. A cancel or a takeover opens the gate at once, so the claim can say so.

Each wait of a runner is one episode in the ledger (``db.throttling``): kind, latest reason,
start, end, and how often the runner looked, so ``progress`` on any host says why a running
operation does not move and the result says how long it waited. The runner's threads share
one gate, and with it one episode at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from potato_ops.db import health, throttling
from potato_ops.db.engine import read_connection, write_transaction
from potato_ops.domain.sizes import format_size
from potato_ops.ops.bulk.config import BulkConfig
from potato_ops.ops.database import Database

log = logging.getLogger("potato_ops")

POLL_S = 0.5  # how often a waiting worker looks at the gate again
PAUSED = "paused"
WINDOW = "window"
REPLICA_LAG = "replica_lag"
LOAD = "load"
KINDS = (PAUSED, WINDOW, REPLICA_LAG, LOAD)


@dataclass(frozen=True)
class Wait:
    """Why no batch may start now: a kind (for a metric's label) and a line for a person."""

    kind: str
    reason: str


@dataclass(frozen=True)
class RunnerId:
    """Who waits: the runner's token, host and process id (as the ledger records them)."""

    token: str
    host: str
    pid: int


class Gate:
    """One runner's gate on one operation, shared by its worker threads."""

    def __init__(
        self, db: Database, operation_id: str, config: BulkConfig, runner: RunnerId, epoch: int
    ) -> None:
        self.db = db
        self.operation_id = operation_id
        self.runner = runner
        self.epoch = epoch
        self.window = config.maintenance_window()
        lag = config.max_replica_lag
        self.max_lag = None if lag is None else int(lag)
        self.max_sessions = config.max_active_sessions
        self._lock = threading.Lock()
        self._episode: tuple[int, str] | None = None  # (id, kind) of this runner's open wait
        self._current: Wait | None = None
        self._looked_at = 0.0

    @property
    def current(self) -> Wait | None:
        """Return why this runner's workers wait now, or None when they go."""
        return self._current

    def check(self) -> Wait | None:
        """Return why no batch may start now, or None (go). Reads the ledger and the server."""
        with read_connection(self.db.engine) as conn:
            flags = throttling.gate_flags(conn, self.operation_id)
            if flags is None or flags.cancel_requested or flags.epoch != self.epoch:
                return None  # the claim says cancelled or fenced: the worker must get there
            if flags.pause_requested:
                return Wait(PAUSED, f"paused: potato-ops resume {self.operation_id} continues it")
            now = self.db.now()
            if self.window is not None and not self.window.is_open(now):
                return Wait(WINDOW, self.window.waiting_message(now))
            if self.max_lag is not None:
                wait = self._lag_wait(health.standby_lags(conn), self.max_lag)
                if wait is not None:
                    return wait
            if self.max_sessions is not None:
                active = health.active_sessions(conn)
                if active > self.max_sessions:
                    return Wait(LOAD, f"throttled: {active} active sessions > {self.max_sessions}")
        return None

    @staticmethod
    def _lag_wait(lags: list[health.StandbyLag], limit: int) -> Wait | None:
        unknown = [s.standby for s in lags if s.lag_bytes is None]
        if unknown:
            return Wait(
                REPLICA_LAG,
                f"throttled: replica lag of {unknown[0]} unknown (the role needs pg_monitor to read it)",
            )
        worst = max(lags, key=lambda s: s.lag_bytes or 0, default=None)
        if worst is not None and (worst.lag_bytes or 0) > limit:
            return Wait(
                REPLICA_LAG,
                f"throttled: replica lag {format_size(worst.lag_bytes or 0)} > {format_size(limit)}"
                + (f" ({worst.standby})" if len(lags) > 1 else ""),
            )
        return None

    def wait_until_open(self, stop: threading.Event) -> bool:
        """Block until no batch needs to wait; return False if ``stop`` was set meanwhile."""
        while not stop.is_set():
            if self._look() is None:
                return True
            if stop.wait(POLL_S):
                break
        return False

    def _look(self) -> Wait | None:
        with self._lock:
            # Threads that find the gate closed share one look per half poll: one read and
            # one ledger write per runner, not per thread.
            if self._current is not None and time.perf_counter() - self._looked_at < POLL_S / 2:
                return self._current
            wait = self.check()
            self._looked_at = time.perf_counter()
            self._record(wait)
            self._current = wait
            return wait

    def _record(self, wait: Wait | None) -> None:
        now = self.db.now()
        with write_transaction(self.db.engine) as conn:
            if self._episode is not None and (wait is None or wait.kind != self._episode[1]):
                throttling.close_episode(conn, self._episode[0], now)
                log.info("bulk operation %s: %s wait over", self.operation_id, self._episode[1])
                self._episode = None
            if wait is None:
                return
            if self._episode is None:
                episode = throttling.open_episode(
                    conn,
                    self.operation_id,
                    runner_token=self.runner.token,
                    runner_host=self.runner.host,
                    runner_pid=self.runner.pid,
                    kind=wait.kind,
                    reason=wait.reason,
                    now=now,
                )
                self._episode = (episode, wait.kind)
                log.info("bulk operation %s: %s", self.operation_id, wait.reason)
            else:
                throttling.touch_episode(conn, self._episode[0], wait.reason, now)

    def close(self) -> None:
        """End this runner's open wait, if any (the run is over)."""
        with self._lock:
            if self._episode is None:
                return
            try:
                with write_transaction(self.db.engine) as conn:
                    throttling.close_episode(conn, self._episode[0], self.db.now())
            except Exception as exc:  # the run's own outcome matters more than this row
                log.warning("bulk operation %s: wait left open: %r", self.operation_id, type(exc).__name__)
            self._episode = None
            self._current = None
