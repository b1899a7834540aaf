# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 Error recovery
#
# Playbook: **Error Recovery Scenarios**. Scenario 1, invariant violations: users with overlapping runs or
# several active runs are rebuilt. Scenario 2, performance degradation: users with slow rebuilds get a
# partial rebuild of recent days. Scenario 3, data corruption: every other user whose runs break an
# invariant is backed up, rebuilt, validated, and restored from the backup if that fails; runs of users that
# do not exist are backed up and removed. Detect, dry run, repair (with `dry_run=False`), verify.
#
# Run it headless with `potato-ops run 05_error_recovery -p NAME VALUE ...` (archived under `reports/`) or
# plain `papermill 05_error_recovery.ipynb out.ipynb -p NAME VALUE ...`. The database URL is read from the
# environment variable named by `database_url_env` (default `POTATO_DATABASE_URL`; when it is unset, the
# embedded SQLite database). Parameters are checked in the cell after them: a wrong one stops the run there
# with a message saying what to fix.
#
# A problem verdict ends the run on a one-line `ProblemFound` error once the record is written, so
# papermill, `jupyter nbconvert --execute`, `potato-ops run` and any scheduler see a non-zero exit.

# %% [markdown]
# ## Parameters

# %% tags=["parameters"]
scenario: str = "all"  # invariant_violations, performance_degradation, data_corruption or all
dry_run: bool = True  # True: compute and show every change, then roll back; False: commit
confirm: str = ""  # a live run needs the name of the database here (the check cell shows it)
slow_threshold_ms: float = 1000.0  # performance: a rebuild slower than this makes a user slow
recent_days: int = 90  # performance: the partial rebuild covers this many recent days
still_slow_ms: float = 5000.0  # performance: flag users still slower than this afterwards
operator: str = ""  # who runs this procedure (kept in the archived record)
ticket: str = ""  # the incident or change ticket this run belongs to
database_url_env: str = "POTATO_DATABASE_URL"  # NAME of the variable holding the database URL, never a URL

# %% [markdown]
# ## Check the parameters, open the database

# %%
from potato_ops.runbook.params import check_error_recovery

params = check_error_recovery(
    scenario=scenario,
    dry_run=dry_run,
    confirm=confirm,
    slow_threshold_ms=slow_threshold_ms,
    recent_days=recent_days,
    still_slow_ms=still_slow_ms,
    operator=operator,
    ticket=ticket,
    database_url_env=database_url_env,
)
params

# %%
from potato_ops.notebook_runs.result import record_result
from potato_ops.runbook.error_recovery import (
    affected_timezones_chart,
    detect,
    dry_run_repairs,
    recovery_verdict,
    repair,
    slow_users_chart,
    verify,
    violations_chart,
)
from potato_ops.runbook.session import open_session, safety_checklist

session = open_session(params.common)
session

# %% [markdown]
# ## Safety checklist

# %%
safety_checklist(session, "error recovery", dry_run=params.dry_run)

# %% [markdown]
# ## Detect

# %%
detection = detect(session, params)
detection

# %%
detection.check.violations_frame()

# %%
detection.check.chart()

# %%
affected_timezones_chart(session, detection)

# %%
slow_users_chart(session)

# %% [markdown]
# ## Dry run

# %%
dry = dry_run_repairs(session, detection, params)
dry

# %%
dry.frame()

# %% [markdown]
# ## Repair

# %%
done = repair(session, detection, params)
done

# %%
done.frame()

# %% [markdown]
# ## Verify

# %%
after = verify(session, detection, done)
after

# %%
violations_chart(detection, after)

# %% [markdown]
# ## Verdict

# %%
verdict = recovery_verdict(params, detection, dry, done, after)
verdict

# %%
record_result(
    verdict.text,
    status=verdict.status,
    figures=verdict.figures,
    operation_ids=verdict.operation_ids,
    database=session.record(),
)
