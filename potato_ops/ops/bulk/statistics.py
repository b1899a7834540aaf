"""Keep the planner's statistics fit for a bulk operation's keyed lookups while it runs.

Checked when a run starts (a mass change just before it, the usual case after an incident,
leaves them stale) and again every ``RECHECK_S`` while it runs (an operation that fills every
user's missing runs grows ``runs`` from nothing, which its statistics taken at the start do not
know). See ``db.statistics`` for what stale means and why it matters.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from potato_ops.config import mask_secrets
from potato_ops.db.engine import is_postgres, read_connection, write_transaction
from potato_ops.db.statistics import analyze_tables, stale_tables

log = logging.getLogger("potato_ops")

RECHECK_S = 30.0


def freshen_statistics(engine: Engine) -> list[str]:
    """ANALYZE the bulk's tables whose statistics are stale; return the tables analyzed."""
    if not is_postgres(engine):
        return []
    with read_connection(engine) as conn:
        stale = stale_tables(conn)
    if not stale:
        return []
    t0 = time.perf_counter()
    with write_transaction(engine) as conn:
        done = analyze_tables(conn, stale)
    if done:
        log.info(
            "planner statistics of %s were stale (changed since their last ANALYZE): analyzed in %.1f s",
            ", ".join(done),
            time.perf_counter() - t0,
        )
    return done


class StatisticsWatch:
    """Freshen the statistics now, then again whenever ``due`` says it is time."""

    def __init__(self, engine: Engine, every_s: float = RECHECK_S) -> None:
        self.engine = engine
        self.every_s = every_s
        self.analyzed: list[str] = []
        self._last = time.perf_counter()
        self._check()

    def due(self) -> None:
        """Check again when ``every_s`` has passed since the last check."""
        if time.perf_counter() - self._last >= self.every_s:
            self._last = time.perf_counter()
            self._check()

    def _check(self) -> None:
        if not is_postgres(self.engine):
            return
        try:
            self.analyzed += freshen_statistics(self.engine)
        except SQLAlchemyError as exc:  # an optimisation: it never fails the operation
            log.warning("planner statistics not refreshed: %s", mask_secrets(str(exc)).splitlines()[0])
