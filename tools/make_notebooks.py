"""Write the runbook notebooks in ``notebooks/`` from the specifications below.

Run ``python tools/make_notebooks.py`` after editing a specification; ``--check`` exits 1 when
a committed notebook differs from what this script would write (the tests run it). Every
notebook gets the same shape: a title, a ``parameters`` cell of typed literals with a help
comment each, a validation cell, then one package call per cell, ending with the verdict and
``record_result``. Notebooks are written without outputs.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

# nbformat has no type hints; its builders are used through these two names.
V4: Any = nbformat.v4
WRITES: Any = nbformat.writes

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}

COMMON_PARAMETERS = (
    'operator: str = ""  # who runs this procedure (kept in the archived record)',
    'ticket: str = ""  # the incident or change ticket this run belongs to',
    'database_url_env: str = "POTATO_DATABASE_URL"  # NAME of the environment variable that holds '
    "the database URL (never the URL itself); unset default: the embedded SQLite database",
)
USER_PARAMETERS = (
    'user_email: str = ""  # the user\'s email (give this or user_id)',
    'user_id: str = ""  # the user\'s id (give this or user_email)',
)
DRY_RUN = "dry_run: bool = True  # True: compute and show every change, then roll back; False: commit"
CALENDAR = "calendar_days: int = 120  # days of history drawn in the calendar chart"
HOW_TO_RUN = (
    "Run it headless with `potato-ops run {name} -p NAME VALUE ...` (archived under `reports/`) "
    "or plain `papermill {name}.ipynb out.ipynb -p NAME VALUE ...`. The database URL is read "
    "from the environment variable named by `database_url_env` (default `POTATO_DATABASE_URL`; "
    "when it is unset, the embedded SQLite database). Parameters are checked in the cell after "
    "them: a wrong one stops the run there with a message saying what to fix."
)
SESSION = "session = open_session(params.common)\nsession"
RECORD = (
    "record_result(\n"
    "    verdict.text,\n"
    "    status=verdict.status,\n"
    "    figures=verdict.figures,\n"
    "    operation_ids=verdict.operation_ids,\n"
    "    database=session.record(),\n"
    ")"
)


@dataclass(frozen=True)
class Spec:
    """One notebook: its name, introduction, parameters, and cells after the parameters."""

    name: str
    title: str
    intro: str
    parameters: tuple[str, ...]
    cells: tuple[str, ...]  # "## ..." starts a markdown cell; anything else is code


def _validation(function: str, names: list[str]) -> str:
    args = "".join(f"    {n}={n},\n" for n in names)
    return f"from potato_ops.runbook import {function}\n\nparams = {function}(\n{args})\nparams"


def _names(parameters: tuple[str, ...]) -> list[str]:
    return [line.split(":", 1)[0].strip() for line in parameters]


SINGLE_USER = Spec(
    "01_single_user_recovery",
    "Single user recovery",
    "Playbook: **Single User Recovery**. Use when a user reports missing or incorrect run data, "
    "when corruption is detected for one user, or when a timezone change needs recalculating.\n\n"
    "Expected: under 1 s for a typical user (365 days of history), 0 invariant violations.",
    (
        *USER_PARAMETERS,
        DRY_RUN,
        "keep_backup: bool = True  # keep a backup of the runs replaced (needed to roll back)",
        CALENDAR,
        *COMMON_PARAMETERS,
    ),
    (
        "from potato_ops.notebook_runs.result import record_result\n"
        "from potato_ops.runbook import open_session, safety_checklist\n"
        "from potato_ops.runbook.user import (\n"
        "    execute_rebuild,\n"
        "    identify_user,\n"
        "    post_recovery_validation,\n"
        "    recovery_calendar,\n"
        "    recovery_verdict,\n"
        "    rollback_if_needed,\n"
        ")\n\n" + SESSION,
        "## Safety checklist",
        'safety_checklist(\n    session,\n    "single user recovery",\n    dry_run=params.dry_run,\n'
        '    backups="per_user" if params.keep_backup else "skipped",\n)',
        "## 1. Identify the user, 2. Pre-recovery validation",
        "snapshot = identify_user(session, params.user)\nsnapshot",
        "snapshot.runs_frame()",
        "snapshot.violations_frame()",
        "## 3. Execute rebuild",
        "rebuild = execute_rebuild(\n"
        "    session, snapshot, dry_run=params.dry_run, keep_backup=params.keep_backup\n)\nrebuild",
        "rebuild.changes_frame()",
        "## 4. Post-recovery validation",
        "validation = post_recovery_validation(session, snapshot, rebuild)\nvalidation",
        "## 5. Rollback if needed",
        "rollback = rollback_if_needed(session, snapshot, rebuild, validation)\nrollback",
        "## Calendar: marked days, runs before and after",
        "recovery_calendar(snapshot, rebuild, rollback, days=params.calendar_days)",
        "## Verdict",
        "verdict = recovery_verdict(params, snapshot, rebuild, validation, rollback)\nverdict",
        RECORD,
    ),
)

PARTIAL = Spec(
    "02_partial_rebuild",
    "Partial rebuild",
    "Playbook: **Partial Rebuild Procedure**. Use for a large date range that needs "
    "recalculating, to spare heavy users a full rebuild, or for a targeted fix of one period. "
    "Only the runs that intersect or touch the range are recomputed; every run entirely outside "
    "`[from_date - 1, to_date + 1]` keeps its id and dates (checked below).\n\n"
    "Performance targets: < 500 ms for 30 days, < 2 s for 180 days, < 5 s for a full year.",
    (
        *USER_PARAMETERS,
        'from_date: str = ""  # first day of the range, YYYY-MM-DD; empty: no lower bound',
        'to_date: str = ""  # last day of the range, YYYY-MM-DD; empty: no upper bound',
        DRY_RUN,
        "keep_backup: bool = True  # keep a backup of the runs replaced (needed to roll back)",
        CALENDAR,
        *COMMON_PARAMETERS,
    ),
    (
        "from potato_ops.notebook_runs.result import record_result\n"
        "from potato_ops.runbook import open_session, safety_checklist\n"
        "from potato_ops.runbook.user import (\n"
        "    execute_rebuild,\n"
        "    identify_user,\n"
        "    post_recovery_validation,\n"
        "    recovery_calendar,\n"
        "    recovery_verdict,\n"
        "    rollback_if_needed,\n"
        "    verify_range_isolation,\n"
        ")\n\n" + SESSION,
        "## Safety checklist",
        'safety_checklist(\n    session,\n    "partial rebuild",\n    dry_run=params.dry_run,\n'
        '    backups="per_user" if params.keep_backup else "skipped",\n)',
        "## 1. Define the date range (checked above), identify the user",
        "snapshot = identify_user(session, params.user)\nsnapshot",
        "snapshot.runs_frame()",
        "## 2. Execute the partial rebuild",
        "rebuild = execute_rebuild(\n    session,\n    snapshot,\n    dry_run=params.dry_run,\n"
        "    keep_backup=params.keep_backup,\n    from_date=params.from_date,\n"
        "    to_date=params.to_date,\n)\nrebuild",
        "rebuild.changes_frame()",
        "## 3. Verify range isolation",
        "isolation = verify_range_isolation(snapshot, rebuild)\nisolation",
        "## Post-recovery validation and rollback if needed",
        "validation = post_recovery_validation(session, snapshot, rebuild)\nvalidation",
        "rollback = rollback_if_needed(session, snapshot, rebuild, validation)\nrollback",
        "## Calendar: the range, marked days, runs before and after",
        "recovery_calendar(\n    snapshot,\n    rebuild,\n    rollback,\n    days=params.calendar_days,\n"
        "    window=(params.from_date, params.to_date),\n)",
        "## Verdict",
        "verdict = recovery_verdict(params, snapshot, rebuild, validation, rollback, isolation)\nverdict",
        RECORD,
    ),
)

BULK = Spec(
    "03_bulk_recovery",
    "Bulk recovery",
    "Playbook: **Bulk Recovery Procedure**. Use after an algorithm update, a database migration, "
    "or system-wide corruption. A dry run always comes first; the real rebuild runs only with "
    "`dry_run=False`, and is refused while `ff.potato.runs_v2` is off unless "
    "`ignore_feature_flag=True`.\n\n"
    "Targets: 1000 users/hour for a full rebuild, 5000 users/hour for a partial one, "
    "< 0.1% failures.",
    (
        "user_ids: list[str] = []  # users to rebuild (a list, or ids joined by commas); empty: every user",
        "batch_size: int = 10  # users per batch",
        "max_workers: int = 5  # batches processed at once",
        DRY_RUN,
        'from_date: str = ""  # partial rebuild from this day, YYYY-MM-DD; empty: no lower bound',
        'to_date: str = ""  # partial rebuild up to this day, YYYY-MM-DD; empty: no upper bound',
        "skip_backup: bool = False  # True: keep no backups (faster, but nothing to roll back to)",
        "max_failure_rate: float = 0.01  # stop when more than this share of users fail (0..1)",
        "ignore_feature_flag: bool = False  # True: run even while ff.potato.runs_v2 is off",
        *COMMON_PARAMETERS,
    ),
    (
        "from potato_ops.notebook_runs.result import record_result\n"
        "from potato_ops.runbook import open_session, safety_checklist\n"
        "from potato_ops.runbook.bulk import (\n"
        "    bulk_dry_run,\n"
        "    bulk_execute,\n"
        "    bulk_progress,\n"
        "    bulk_verdict,\n"
        "    duration_chart,\n"
        "    plan_bulk,\n"
        "    slowest_chart,\n"
        "    validate_bulk,\n"
        ")\n"
        "from potato_ops.runbook.scan import run_lengths_chart\n\n" + SESSION,
        "## Safety checklist",
        'safety_checklist(\n    session,\n    "bulk recovery",\n    dry_run=params.dry_run,\n'
        '    backups="skipped" if params.skip_backup else "per_user",\n    bulk=True,\n)',
        "## 1. Preparation, 2. Configure the bulk operation",
        "plan = plan_bulk(session, params)\nplan",
        "plan.config_frame()",
        "## 3. Execute the dry run",
        "dry = bulk_dry_run(session, plan)\ndry",
        "dry.changes_frame()",
        "## 4. Execute the actual rebuild",
        "real = bulk_execute(session, plan)\nreal",
        "real.errors_frame()",
        "## 5. Progress monitoring",
        "bulk_progress(session, dry, real)",
        "## Validation and charts",
        "check = validate_bulk(session, plan)\ncheck",
        "duration_chart(session, real)",
        "slowest_chart(session, real)",
        "run_lengths_chart(session, None if plan.everyone else plan.user_ids)",
        "## Verdict",
        "verdict = bulk_verdict(params, plan, dry, real, check)\nverdict",
        RECORD,
    ),
)

TIMEZONE = Spec(
    "04_timezone_migration",
    "Timezone migration",
    "Playbook: **Timezone Migration Procedure**. Use when a user changes timezone, after a global "
    "timezone policy change, or to correct DST transitions. With a user and `new_timezone`, that "
    "user is moved; with a user alone, they are rebuilt in their current zone; with neither, "
    "every user whose timezone changed since their last rebuild is rebuilt.\n\n"
    "Day marks never change; only which run is active may, since today is the user's local date.",
    (
        *USER_PARAMETERS,
        'new_timezone: str = ""  # IANA timezone to move the user to (e.g. America/Los_Angeles); empty: keep',
        'since: str = ""  # only changes after this (ISO datetime, or 24h, 7d ago); empty: all pending',
        DRY_RUN,
        *COMMON_PARAMETERS,
    ),
    (
        "from potato_ops.notebook_runs.result import record_result\n"
        "from potato_ops.runbook import open_session, safety_checklist\n"
        "from potato_ops.runbook.timezone import (\n"
        "    find_affected_users,\n"
        "    rebuild_affected,\n"
        "    timezone_verdict,\n"
        "    timezones_chart,\n"
        "    update_timezones,\n"
        "    verify_active_runs,\n"
        ")\n\n" + SESSION,
        "## Safety checklist",
        'safety_checklist(session, "timezone migration", dry_run=params.dry_run)',
        "## 1. Identify affected users",
        "affected = find_affected_users(session, params)\naffected",
        "affected.frame(session)",
        "timezones_chart(affected)",
        "## 2. Update user timezone",
        "update = update_timezones(session, affected, dry_run=params.dry_run)\nupdate",
        "## 3. Rebuild with the new timezone context",
        "rebuilds = rebuild_affected(session, affected, dry_run=params.dry_run)\nrebuilds",
        "rebuilds.frame()",
        "## Verify the active runs",
        "check = verify_active_runs(session, rebuilds)\ncheck",
        "## Verdict",
        "verdict = timezone_verdict(params, affected, update, rebuilds, check)\nverdict",
        RECORD,
    ),
)

RECOVERY = Spec(
    "05_error_recovery",
    "Error recovery",
    "Playbook: **Error Recovery Scenarios**. Scenario 1, invariant violations: users with "
    "overlapping runs or several active runs are rebuilt. Scenario 2, performance degradation: "
    "users with slow rebuilds get a partial rebuild of recent days. Scenario 3, data corruption: "
    "every other user whose runs break an invariant is backed up, rebuilt, validated, and "
    "restored from the backup if that fails; runs of users that do not exist are backed up and "
    "removed. Detect, dry run, repair (with `dry_run=False`), verify.",
    (
        'scenario: str = "all"  # invariant_violations, performance_degradation, data_corruption or all',
        DRY_RUN,
        "slow_threshold_ms: float = 1000.0  # performance: a rebuild slower than this makes a user slow",
        "recent_days: int = 90  # performance: the partial rebuild covers this many recent days",
        "still_slow_ms: float = 5000.0  # performance: flag users still slower than this afterwards",
        *COMMON_PARAMETERS,
    ),
    (
        "from potato_ops.notebook_runs.result import record_result\n"
        "from potato_ops.runbook import open_session, safety_checklist\n"
        "from potato_ops.runbook.recovery import (\n"
        "    affected_timezones_chart,\n"
        "    detect,\n"
        "    dry_run_repairs,\n"
        "    recovery_verdict,\n"
        "    repair,\n"
        "    slow_users_chart,\n"
        "    verify,\n"
        "    violations_chart,\n"
        ")\n\n" + SESSION,
        "## Safety checklist",
        'safety_checklist(session, "error recovery", dry_run=params.dry_run)',
        "## Detect",
        "detection = detect(session, params)\ndetection",
        "detection.check.violations_frame()",
        "detection.check.chart()",
        "affected_timezones_chart(session, detection)",
        "slow_users_chart(session)",
        "## Dry run",
        "dry = dry_run_repairs(session, detection, params)\ndry",
        "dry.frame()",
        "## Repair",
        "done = repair(session, detection, params)\ndone",
        "done.frame()",
        "## Verify",
        "after = verify(session, detection, done)\nafter",
        "violations_chart(detection, after)",
        "## Verdict",
        "verdict = recovery_verdict(params, detection, dry, done, after)\nverdict",
        RECORD,
    ),
)

RESTORE = Spec(
    "06_restore_from_backup",
    "Restore from backup",
    "Playbook: **Restore from Backup**. Use when a rebuild failed, corruption was found after a "
    "rebuild, or an emergency rollback is needed. The backup's owner and checksum are checked "
    "first; the runs it replaces are backed up before the restore, so it can be undone.",
    (
        *USER_PARAMETERS,
        "backup_id: int = 0  # the backup to restore; 0: the user's newest backup",
        DRY_RUN,
        CALENDAR,
        *COMMON_PARAMETERS,
    ),
    (
        "from potato_ops.notebook_runs.result import record_result\n"
        "from potato_ops.runbook import open_session, safety_checklist\n"
        "from potato_ops.runbook.restore import (\n"
        "    choose_backup,\n"
        "    restore_backup,\n"
        "    restore_calendar,\n"
        "    restore_verdict,\n"
        "    validate_restoration,\n"
        ")\n"
        "from potato_ops.runbook.user import identify_user\n\n" + SESSION,
        "## Safety checklist",
        'safety_checklist(session, "restore from backup", dry_run=params.dry_run, backups="restore")',
        "## 1. Retrieve the backup",
        "snapshot = identify_user(session, params.user)\nsnapshot",
        "choice = choose_backup(session, snapshot, params.backup_id)\nchoice",
        "choice.backups_frame()",
        "## 2. Restore from backup",
        "step = restore_backup(session, snapshot, choice, dry_run=params.dry_run)\nstep",
        "## 3. Verify restoration, 4. Validate restoration",
        "check = validate_restoration(session, snapshot, choice, step)\ncheck",
        "restore_calendar(snapshot, step, days=params.calendar_days)",
        "## Verdict",
        "verdict = restore_verdict(params, snapshot, choice, step, check)\nverdict",
        RECORD,
    ),
)

AUDIT = Spec(
    "07_monitoring_audit",
    "Monitoring audit",
    "Playbook: **Monitoring and Alerting**. The key metrics over a window (rebuild success rate, "
    "durations, invariant violations), the alert rules evaluated against them, and the charts. "
    "Read-only. Targets: success rate > 99%, average rebuild < 1 s, 0 violations.",
    (
        'since: str = "24h"  # window start: a duration back from now (90m, 24h, 7d) or an ISO datetime',
        "slow_threshold_ms: float = 1000.0  # a rebuild slower than this counts as slow",
        "scan: bool = True  # run a fresh whole-database invariant scan (the costly part)",
        "top_slow_users: int = 10  # how many of the slowest users to chart",
        'alert_rules: str = ""  # path of an alert rules YAML file; empty: the shipped default rules',
        *COMMON_PARAMETERS,
    ),
    (
        "from potato_ops.notebook_runs.result import record_result\n"
        "from potato_ops.runbook import open_session, safety_checklist\n"
        "from potato_ops.runbook.audit import (\n"
        "    affected_timezones_chart,\n"
        "    audit_metrics,\n"
        "    audit_verdict,\n"
        "    duration_chart,\n"
        "    evaluate_alerts,\n"
        "    lengths_chart,\n"
        "    slowest_chart,\n"
        "    success_chart,\n"
        "    violations_chart,\n"
        ")\n\n" + SESSION,
        "## Safety checklist",
        'safety_checklist(session, "monitoring audit", dry_run=None)',
        "## Key metrics",
        "figures = audit_metrics(session, params)\nfigures",
        "figures.frame()",
        "## Alerts",
        "alerts = evaluate_alerts(params, figures)\nalerts",
        "alerts.frame()",
        "## Rebuilds: durations, success rate, slowest users",
        "duration_chart(figures)",
        "success_chart(figures)",
        "slowest_chart(figures, params.top_slow_users)",
        "## Invariants: violations, run lengths, timezones of affected users",
        "violations_chart(figures)",
        "lengths_chart(session)",
        "affected_timezones_chart(session, figures)",
        "figures.violations_frame()",
        "## Verdict",
        "verdict = audit_verdict(params, figures, alerts)\nverdict",
        RECORD,
    ),
)

TROUBLESHOOT = Spec(
    "08_troubleshooting",
    "Troubleshooting",
    "Playbook: **Troubleshooting Guide**. The common issues checked one by one, and the debug "
    "procedure (a dry-run rebuild with its details, the consecutive groups of the marks). "
    "Read-only. Without a user, only the database-wide checks run.",
    (
        *USER_PARAMETERS,
        "slow_threshold_ms: float = 10000.0  # a recorded rebuild slower than this is too long",
        "many_marks: int = 1000  # more day_marks rows than this is an excessive history",
        CALENDAR,
        *COMMON_PARAMETERS,
    ),
    (
        "from potato_ops.notebook_runs.result import record_result\n"
        "from potato_ops.runbook import open_session, safety_checklist\n"
        "from potato_ops.runbook.troubleshoot import (\n"
        "    check_backups,\n"
        "    check_day_marks,\n"
        "    check_invariant_causes,\n"
        "    check_rebuild_speed,\n"
        "    consecutive_groups,\n"
        "    debug_calendar,\n"
        "    debug_rebuild,\n"
        "    troubleshooting_verdict,\n"
        ")\n"
        "from potato_ops.runbook.user import identify_user\n\n" + SESSION,
        "## Safety checklist",
        'safety_checklist(session, "troubleshooting", dry_run=None)',
        "## The user",
        "snapshot = identify_user(session, params.user)\nsnapshot",
        "## Common issues",
        "marks = check_day_marks(snapshot)\nmarks",
        "speed = check_rebuild_speed(session, snapshot, params)\nspeed",
        "## Debug procedure: a dry-run rebuild with its details",
        "debug = debug_rebuild(session, snapshot)\ndebug",
        "causes = check_invariant_causes(session, snapshot, debug)\ncauses",
        "backups = check_backups(session, snapshot)\nbackups",
        "## Consecutive groups of the marks",
        "consecutive_groups(snapshot)",
        "debug_calendar(snapshot, debug, days=params.calendar_days)",
        "## Verdict",
        "verdict = troubleshooting_verdict(params, snapshot, marks, speed, causes, backups)\nverdict",
        RECORD,
    ),
)

SPECS: tuple[tuple[Spec, str], ...] = (
    (SINGLE_USER, "check_single_user_recovery"),
    (PARTIAL, "check_partial_rebuild"),
    (BULK, "check_bulk_recovery"),
    (TIMEZONE, "check_timezone_migration"),
    (RECOVERY, "check_error_recovery"),
    (RESTORE, "check_restore_from_backup"),
    (AUDIT, "check_monitoring_audit"),
    (TROUBLESHOOT, "check_troubleshooting"),
)


def build(spec: Spec, check_function: str) -> Any:
    """Return the notebook (an nbformat NotebookNode) of one specification, without outputs."""
    v4 = V4
    intro = f"# {spec.name[:2]} {spec.title}\n\n{spec.intro}\n\n{HOW_TO_RUN.format(name=spec.name)}"
    params = v4.new_code_cell("\n".join(spec.parameters))
    params.metadata["tags"] = ["parameters"]
    cells = [
        v4.new_markdown_cell(intro),
        v4.new_markdown_cell("## Parameters"),
        params,
        v4.new_markdown_cell("## Check the parameters, open the database"),
        v4.new_code_cell(_validation(check_function, _names(spec.parameters))),
    ]
    for source in spec.cells:
        cells.append(v4.new_markdown_cell(source) if source.startswith("## ") else v4.new_code_cell(source))
    for i, cell in enumerate(cells):
        cell["id"] = f"{spec.name[:2]}-{i:02d}"
        if cell.cell_type == "code":
            cell["execution_count"] = None
            cell["outputs"] = []
    nb = v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def render(spec: Spec, check_function: str) -> str:
    """Return the notebook file's text."""
    text: str = WRITES(build(spec, check_function))
    return text + "\n"


def main(argv: list[str]) -> int:
    """Write every notebook (or, with --check, report the ones that differ); return the exit code."""
    check = "--check" in argv
    stale: list[str] = []
    NOTEBOOKS_DIR.mkdir(exist_ok=True)
    for spec, function in SPECS:
        path = NOTEBOOKS_DIR / f"{spec.name}.ipynb"
        text = render(spec, function)
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
            continue
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    if stale:
        print("out of date (run python tools/make_notebooks.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
