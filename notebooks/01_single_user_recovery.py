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
# # 01 Single user recovery
#
# Playbook: **Single User Recovery**. Use when a user reports missing or incorrect run data, when corruption
# is detected for one user, or when a timezone change needs recalculating.
#
# Expected: under 1 s for a typical user (365 days of history), 0 invariant violations.
#
# Run it headless with `potato-ops run 01_single_user_recovery -p NAME VALUE ...` (archived under
# `reports/`) or plain `papermill 01_single_user_recovery.ipynb out.ipynb -p NAME VALUE ...`. The database
# URL is read from the environment variable named by `database_url_env` (default `POTATO_DATABASE_URL`; when
# it is unset, the embedded SQLite database). Parameters are checked in the cell after them: a wrong one
# stops the run there with a message saying what to fix.
#
# A problem verdict ends the run on a one-line `ProblemFound` error once the record is written, so
# papermill, `jupyter nbconvert --execute`, `potato-ops run` and any scheduler see a non-zero exit.

# %% [markdown]
# ## Parameters

# %% tags=["parameters"]
user_email: str = ""  # the user's email (give this or user_id)
user_id: str = ""  # the user's id (give this or user_email)
dry_run: bool = True  # True: compute and show every change, then roll back; False: commit
confirm: str = ""  # a live run needs the name of the database here (the check cell shows it)
keep_backup: bool = True  # keep a backup of the runs replaced (needed to roll back)
calendar_days: int = 120  # days of history drawn in the calendar chart
operator: str = ""  # who runs this procedure (kept in the archived record)
ticket: str = ""  # the incident or change ticket this run belongs to
database_url_env: str = "POTATO_DATABASE_URL"  # NAME of the variable holding the database URL, never a URL

# %% [markdown]
# ## Check the parameters, open the database

# %%
from potato_ops.runbook.params import check_single_user_recovery

params = check_single_user_recovery(
    user_email=user_email,
    user_id=user_id,
    dry_run=dry_run,
    confirm=confirm,
    keep_backup=keep_backup,
    calendar_days=calendar_days,
    operator=operator,
    ticket=ticket,
    database_url_env=database_url_env,
)
params

# %%
from potato_ops.notebook_runs.result import record_result
from potato_ops.runbook.session import open_session, safety_checklist
from potato_ops.runbook.single_user_recovery import (
    execute_rebuild,
    identify_user,
    post_recovery_validation,
    rebuild_verdict,
    recovery_calendar,
    rollback_if_needed,
)

session = open_session(params.common)
session

# %% [markdown]
# ## Safety checklist

# %%
safety_checklist(
    session,
    "single user recovery",
    dry_run=params.dry_run,
    backups="per_user" if params.keep_backup else "skipped",
)

# %% [markdown]
# ## 1. Identify the user, 2. Pre-recovery validation

# %%
snapshot = identify_user(session, params.user)
snapshot

# %%
snapshot.runs_frame()

# %%
snapshot.violations_frame()

# %% [markdown]
# ## 3. Execute rebuild

# %%
rebuild = execute_rebuild(session, snapshot, dry_run=params.dry_run, keep_backup=params.keep_backup)
rebuild

# %%
rebuild.changes_frame()

# %% [markdown]
# ## 4. Post-recovery validation

# %%
validation = post_recovery_validation(session, snapshot, rebuild)
validation

# %% [markdown]
# ## 5. Rollback if needed

# %%
rollback = rollback_if_needed(session, snapshot, rebuild, validation)
rollback

# %% [markdown]
# ## Calendar: marked days, runs before and after

# %%
recovery_calendar(snapshot, rebuild, rollback, days=params.calendar_days)

# %% [markdown]
# ## Verdict

# %%
verdict = rebuild_verdict(params, snapshot, rebuild, validation, rollback)
verdict

# %%
record_result(
    verdict.text,
    status=verdict.status,
    figures=verdict.figures,
    operation_ids=verdict.operation_ids,
    database=session.record(),
)
