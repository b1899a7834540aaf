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
# # 06 Restore from backup
#
# Playbook: **Restore from Backup**. Use when a rebuild failed, corruption was found after a rebuild, or an
# emergency rollback is needed. The backup's owner and checksum are checked first; the runs it replaces are
# backed up before the restore, so it can be undone.
#
# Run it headless with `potato-ops run 06_restore_from_backup -p NAME VALUE ...` (archived under `reports/`)
# or plain `papermill 06_restore_from_backup.ipynb out.ipynb -p NAME VALUE ...`. The database URL is read
# from the environment variable named by `database_url_env` (default `POTATO_DATABASE_URL`; when it is
# unset, the embedded SQLite database). Parameters are checked in the cell after them: a wrong one stops the
# run there with a message saying what to fix.
#
# A problem verdict ends the run on a one-line `ProblemFound` error once the record is written, so
# papermill, `jupyter nbconvert --execute`, `potato-ops run` and any scheduler see a non-zero exit.

# %% [markdown]
# ## Parameters

# %% tags=["parameters"]
user_email: str = ""  # the user's email (give this or user_id)
user_id: str = ""  # the user's id (give this or user_email)
backup_id: int = 0  # the backup to restore; 0: the one taken before the incident's first change
since: str = ""  # incident start (ISO datetime, or 24h, 7d ago) when no ticket links its changes
dry_run: bool = True  # True: compute and show every change, then roll back; False: commit
confirm: str = ""  # a live run needs the name of the database here (the check cell shows it)
calendar_days: int = 120  # days of history drawn in the calendar chart
operator: str = ""  # who runs this procedure (kept in the archived record)
ticket: str = ""  # the incident or change ticket this run belongs to
database_url_env: str = "POTATO_DATABASE_URL"  # NAME of the variable holding the database URL, never a URL

# %% [markdown]
# ## Check the parameters, open the database

# %%
from potato_ops.runbook.params import check_restore_from_backup

params = check_restore_from_backup(
    user_email=user_email,
    user_id=user_id,
    backup_id=backup_id,
    since=since,
    dry_run=dry_run,
    confirm=confirm,
    calendar_days=calendar_days,
    operator=operator,
    ticket=ticket,
    database_url_env=database_url_env,
)
params

# %%
from potato_ops.notebook_runs.result import record_result
from potato_ops.runbook.restore_from_backup import (
    choose_backup,
    restore_backup,
    restore_calendar,
    restore_verdict,
    validate_restoration,
)
from potato_ops.runbook.session import open_session, safety_checklist
from potato_ops.runbook.single_user_recovery import identify_user

session = open_session(params.common)
session

# %% [markdown]
# ## Safety checklist

# %%
safety_checklist(session, "restore from backup", dry_run=params.dry_run, backups="restore")

# %% [markdown]
# ## 1. Retrieve the backup

# %%
snapshot = identify_user(session, params.user)
snapshot

# %%
choice = choose_backup(session, snapshot, params.backup_id, since=params.since)
choice

# %%
choice.backups_frame()

# %% [markdown]
# ## 2. Restore from backup

# %%
step = restore_backup(session, snapshot, choice, dry_run=params.dry_run)
step

# %% [markdown]
# ## 3. Verify restoration, 4. Validate restoration

# %%
check = validate_restoration(session, snapshot, choice, step)
check

# %%
restore_calendar(snapshot, step, days=params.calendar_days)

# %% [markdown]
# ## Verdict

# %%
verdict = restore_verdict(params, snapshot, choice, step, check)
verdict

# %%
record_result(
    verdict.text,
    status=verdict.status,
    figures=verdict.figures,
    operation_ids=verdict.operation_ids,
    database=session.record(),
)
