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
# # 04 Timezone migration
#
# Playbook: **Timezone Migration Procedure**. Use when a user changes timezone, after a global timezone
# policy change, or to correct DST transitions. With a user and `new_timezone`, that user is moved; with a
# user alone, they are rebuilt in their current zone; with neither, every user whose timezone changed since
# their last rebuild is rebuilt.
#
# Day marks never change; only which run is active may, since today is the user's local date.
#
# Run it headless with `potato-ops run 04_timezone_migration -p NAME VALUE ...` (archived under `reports/`)
# or plain `papermill 04_timezone_migration.ipynb out.ipynb -p NAME VALUE ...`. The database URL is read
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
new_timezone: str = ""  # IANA timezone to move the user to (e.g. America/Los_Angeles); empty: keep
since: str = ""  # only changes after this (ISO datetime, or 24h, 7d ago); empty: all pending
dry_run: bool = True  # True: compute and show every change, then roll back; False: commit
confirm: str = ""  # a live run needs the name of the database here (the check cell shows it)
operator: str = ""  # who runs this procedure (kept in the archived record)
ticket: str = ""  # the incident or change ticket this run belongs to
database_url_env: str = "POTATO_DATABASE_URL"  # NAME of the variable holding the database URL, never a URL

# %% [markdown]
# ## Check the parameters, open the database

# %%
from potato_ops.runbook.params import check_timezone_migration

params = check_timezone_migration(
    user_email=user_email,
    user_id=user_id,
    new_timezone=new_timezone,
    since=since,
    dry_run=dry_run,
    confirm=confirm,
    operator=operator,
    ticket=ticket,
    database_url_env=database_url_env,
)
params

# %%
from potato_ops.notebook_runs.result import record_result
from potato_ops.runbook.session import open_session, safety_checklist
from potato_ops.runbook.timezone_migration import (
    find_affected_users,
    rebuild_affected,
    timezone_verdict,
    timezones_chart,
    update_timezones,
    verify_active_runs,
)

session = open_session(params.common)
session

# %% [markdown]
# ## Safety checklist

# %%
safety_checklist(session, "timezone migration", dry_run=params.dry_run)

# %% [markdown]
# ## 1. Identify affected users

# %%
affected = find_affected_users(session, params)
affected

# %%
affected.frame(session)

# %%
timezones_chart(affected)

# %% [markdown]
# ## 2. Update user timezone

# %%
update = update_timezones(session, affected, dry_run=params.dry_run)
update

# %% [markdown]
# ## 3. Rebuild with the new timezone context

# %%
rebuilds = rebuild_affected(session, affected, dry_run=params.dry_run)
rebuilds

# %%
rebuilds.frame()

# %% [markdown]
# ## Verify the active runs

# %%
check = verify_active_runs(session, rebuilds)
check

# %% [markdown]
# ## Verdict

# %%
verdict = timezone_verdict(params, affected, update, rebuilds, check)
verdict

# %%
record_result(
    verdict.text,
    status=verdict.status,
    figures=verdict.figures,
    operation_ids=verdict.operation_ids,
    database=session.record(),
)
