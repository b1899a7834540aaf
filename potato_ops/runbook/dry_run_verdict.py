"""The one verdict every dry run ends on, whatever the notebook.

``dry run: would change N users (what); to apply: dry_run=False, confirm='NAME'``. Its status
is ``problem`` (red, ``ProblemFound``, exit 3) when the run would change anything, and ``ok``
(green, exit 0) when it would change nothing: the same colour and exit code in 01 to 06.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from potato_ops.notebook_runs.confirm import database_name
from potato_ops.runbook.display import Verdict
from potato_ops.runbook.params import Common


def dry_run_verdict(
    common: Common,
    users: int,
    detail: str,
    figures: Mapping[str, Any],
    operation_ids: Sequence[str] = (),
    *,
    trouble: bool = False,
) -> Verdict:
    """Return the dry run's verdict: ``users`` would change; ``trouble`` marks it a problem anyway."""
    counted = {**figures, "dry_run_would_change_users": users}
    plural = "" if users == 1 else "s"
    if users == 0 and not trouble:
        return Verdict(
            f"dry run: would change 0 users ({detail}); nothing to apply", "ok", counted, tuple(operation_ids)
        )
    apply = f"to apply: dry_run=False, confirm={database_name(common.database_url_env)!r}"
    return Verdict(
        f"dry run: would change {users} user{plural} ({detail}); {apply}",
        "problem",
        counted,
        tuple(operation_ids),
    )
