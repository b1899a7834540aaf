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
# # 03 Bulk recovery
#
# Playbook: **Bulk Recovery Procedure**. Use after an algorithm update, a database migration, or system-wide
# corruption. A dry run always comes first; the real rebuild runs only with `dry_run=False`, and is refused
# while `ff.potato.runs_v2` is off unless `ignore_feature_flag=True`.
#
# Targets: 1000 users/hour for a full rebuild, 5000 users/hour for a partial one, < 0.1% failures.
#
# Run it headless with `potato-ops run 03_bulk_recovery -p NAME VALUE ...` (archived under `reports/`) or
# plain `papermill 03_bulk_recovery.ipynb out.ipynb -p NAME VALUE ...`. The database URL is read from the
# environment variable named by `database_url_env` (default `POTATO_DATABASE_URL`; when it is unset, the
# embedded SQLite database). Parameters are checked in the cell after them: a wrong one stops the run there
# with a message saying what to fix.
#
# A problem verdict ends the run on a one-line `ProblemFound` error once the record is written, so
# papermill, `jupyter nbconvert --execute`, `potato-ops run` and any scheduler see a non-zero exit.

# %% [markdown]
# ## Parameters

# %% tags=["parameters"]
user_ids: list[str] = []  # users to rebuild (a list, or ids joined by commas); empty: every user
batch_size: int = 10  # users per batch
max_workers: int = 5  # batches processed at once
dry_run: bool = True  # True: compute and show every change, then roll back; False: commit
confirm: str = ""  # a live run needs the name of the database here (the check cell shows it)
from_date: str = ""  # partial rebuild from this day, YYYY-MM-DD; empty: no lower bound
to_date: str = ""  # partial rebuild up to this day, YYYY-MM-DD; empty: no upper bound
skip_backup: bool = False  # True: keep no backups (faster, but nothing to roll back to)
max_failure_rate: float = 0.01  # stop when more than this share of users fail (0..1)
ignore_feature_flag: bool = False  # True: run even while ff.potato.runs_v2 is off
max_replica_lag: str = ""  # start no batch while a standby lags more, e.g. 16MB (PostgreSQL); empty: no limit
max_active_sessions: int = 0  # start no batch while more client sessions are active (PostgreSQL); 0: no limit
nice_ratio: float = 0.0  # after each batch, rest this many times its duration (1 halves the load)
batch_seconds: float = 0.0  # adapt users per transaction toward this many seconds; 0: always batch_size
min_batch_size: int = 1  # fewest users per transaction when batch_seconds is set
max_batch_size: int = 0  # most users per transaction when batch_seconds is set; 0: 10x batch_size
window: str = ""  # start batches only in this daily window, HH:MM-HH:MM (may wrap midnight); empty: always
window_timezone: str = "UTC"  # IANA time zone of the window
operation_id: str = ""  # an operation to continue (paused or interrupted) instead of starting a new one
pause: bool = False  # True: pause operation_id (its workers stop at their next batch), nothing else
operator: str = ""  # who runs this procedure (kept in the archived record)
ticket: str = ""  # the incident or change ticket this run belongs to
database_url_env: str = "POTATO_DATABASE_URL"  # NAME of the variable holding the database URL, never a URL

# %% [markdown]
# ## Check the parameters, open the database

# %%
from potato_ops.runbook.params import check_bulk_recovery

params = check_bulk_recovery(
    user_ids=user_ids,
    batch_size=batch_size,
    max_workers=max_workers,
    dry_run=dry_run,
    confirm=confirm,
    from_date=from_date,
    to_date=to_date,
    skip_backup=skip_backup,
    max_failure_rate=max_failure_rate,
    ignore_feature_flag=ignore_feature_flag,
    max_replica_lag=max_replica_lag,
    max_active_sessions=max_active_sessions,
    nice_ratio=nice_ratio,
    batch_seconds=batch_seconds,
    min_batch_size=min_batch_size,
    max_batch_size=max_batch_size,
    window=window,
    window_timezone=window_timezone,
    operation_id=operation_id,
    pause=pause,
    operator=operator,
    ticket=ticket,
    database_url_env=database_url_env,
)
params

# %%
from potato_ops.notebook_runs.result import record_result
from potato_ops.runbook.bulk_recovery import (
    bulk_dry_run,
    bulk_execute,
    bulk_progress,
    bulk_verdict,
    duration_chart,
    plan_bulk,
    slowest_chart,
    validate_bulk,
)
from potato_ops.runbook.database_views import run_lengths_chart
from potato_ops.runbook.session import open_session, safety_checklist

session = open_session(params.common)
session

# %% [markdown]
# ## Safety checklist

# %%
safety_checklist(
    session,
    "bulk recovery",
    dry_run=params.dry_run,
    backups="skipped" if params.skip_backup else "per_user",
    bulk=True,
)

# %% [markdown]
# ## 1. Preparation, 2. Configure the bulk operation

# %%
plan = plan_bulk(session, params)
plan

# %%
plan.config_frame()

# %% [markdown]
# ## 3. Execute the dry run

# %%
dry = bulk_dry_run(session, plan)
dry

# %%
dry.changes_frame()

# %% [markdown]
# ## 4. Execute the actual rebuild

# %%
real = bulk_execute(session, plan)
real

# %%
real.errors_frame()

# %% [markdown]
# ## 5. Progress monitoring

# %%
bulk_progress(session, dry, real)

# %% [markdown]
# ## Validation and charts

# %%
check = validate_bulk(session, plan)
check

# %%
duration_chart(session, real)

# %%
slowest_chart(session, real)

# %%
run_lengths_chart(session, None if plan.everyone else plan.user_ids)

# %% [markdown]
# ## Verdict

# %%
verdict = bulk_verdict(params, plan, dry, real, check)
verdict

# %%
record_result(
    verdict.text,
    status=verdict.status,
    figures=verdict.figures,
    operation_ids=verdict.operation_ids,
    database=session.record(),
)
