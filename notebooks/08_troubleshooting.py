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
# # 08 Troubleshooting
#
# Playbook: **Troubleshooting Guide**. The common issues checked one by one, and the debug procedure (a
# dry-run rebuild with its details, the consecutive groups of the marks). Read-only. Without a user, only
# the database-wide checks run.
#
# Run it headless with `potato-ops run 08_troubleshooting -p NAME VALUE ...` (archived under `reports/`) or
# plain `papermill 08_troubleshooting.ipynb out.ipynb -p NAME VALUE ...`. The database URL is read from the
# environment variable named by `database_url_env` (default `POTATO_DATABASE_URL`; when it is unset, the
# embedded SQLite database). Parameters are checked in the cell after them: a wrong one stops the run there
# with a message saying what to fix.
#
# A problem verdict ends the run on a one-line `ProblemFound` error once the record is written, so
# papermill, `jupyter nbconvert --execute`, `potato-ops run` and any scheduler see a non-zero exit.

# %% [markdown]
# ## Parameters

# %% tags=["parameters"]
user_email: str = ""  # the user's email (give this or user_id)
user_id: str = ""  # the user's id (give this or user_email)
slow_threshold_ms: float = 10000.0  # a recorded rebuild slower than this is too long
many_marks: int = 1000  # more day_marks rows than this is an excessive history
calendar_days: int = 120  # days of history drawn in the calendar chart
operator: str = ""  # who runs this procedure (kept in the archived record)
ticket: str = ""  # the incident or change ticket this run belongs to
database_url_env: str = "POTATO_DATABASE_URL"  # NAME of the variable holding the database URL, never a URL

# %% [markdown]
# ## Check the parameters, open the database

# %%
from potato_ops.runbook.params import check_troubleshooting

params = check_troubleshooting(
    user_email=user_email,
    user_id=user_id,
    slow_threshold_ms=slow_threshold_ms,
    many_marks=many_marks,
    calendar_days=calendar_days,
    operator=operator,
    ticket=ticket,
    database_url_env=database_url_env,
)
params

# %%
from potato_ops.notebook_runs.result import record_result
from potato_ops.runbook.session import open_session, safety_checklist
from potato_ops.runbook.single_user_recovery import identify_user
from potato_ops.runbook.troubleshooting import (
    check_backups,
    check_day_marks,
    check_invariant_causes,
    check_rebuild_speed,
    consecutive_groups,
    debug_calendar,
    debug_rebuild,
    troubleshooting_verdict,
)

session = open_session(params.common)
session

# %% [markdown]
# ## Safety checklist

# %%
safety_checklist(session, "troubleshooting", dry_run=None)

# %% [markdown]
# ## The user

# %%
snapshot = identify_user(session, params.user)
snapshot

# %% [markdown]
# ## Common issues

# %%
marks = check_day_marks(snapshot)
marks

# %%
speed = check_rebuild_speed(session, snapshot, params)
speed

# %% [markdown]
# ## Debug procedure: a dry-run rebuild with its details

# %%
debug = debug_rebuild(session, snapshot)
debug

# %%
causes = check_invariant_causes(session, snapshot, debug)
causes

# %%
backups = check_backups(session, snapshot)
backups

# %% [markdown]
# ## Consecutive groups of the marks

# %%
consecutive_groups(snapshot)

# %%
debug_calendar(snapshot, debug, days=params.calendar_days)

# %% [markdown]
# ## Verdict

# %%
verdict = troubleshooting_verdict(params, snapshot, marks, speed, causes, backups)
verdict

# %%
record_result(
    verdict.text,
    status=verdict.status,
    figures=verdict.figures,
    operation_ids=verdict.operation_ids,
    database=session.record(),
)
