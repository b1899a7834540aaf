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
# # 07 Monitoring audit
#
# Playbook: **Monitoring and Alerting**. The key metrics over a window (rebuild success rate, durations,
# invariant violations), the alert rules evaluated against them, and the charts. Read-only. Targets: success
# rate > 99%, average rebuild < 1 s, 0 violations.
#
# Run it headless with `potato-ops run 07_monitoring_audit -p NAME VALUE ...` (archived under `reports/`) or
# plain `papermill 07_monitoring_audit.ipynb out.ipynb -p NAME VALUE ...`. The database URL is read from the
# environment variable named by `database_url_env` (default `POTATO_DATABASE_URL`; when it is unset, the
# embedded SQLite database). Parameters are checked in the cell after them: a wrong one stops the run there
# with a message saying what to fix.
#
# A problem verdict ends the run on a one-line `ProblemFound` error once the record is written, so
# papermill, `jupyter nbconvert --execute`, `potato-ops run` and any scheduler see a non-zero exit.

# %% [markdown]
# ## Parameters

# %% tags=["parameters"]
since: str = "24h"  # window start: a duration back from now (90m, 24h, 7d) or an ISO datetime
slow_threshold_ms: float = 1000.0  # a rebuild slower than this counts as slow
scan: bool = True  # run a fresh whole-database invariant scan (the costly part)
top_slow_users: int = 10  # how many of the slowest users to chart
alert_rules: str = ""  # path of an alert rules YAML file; empty: the shipped default rules
operator: str = ""  # who runs this procedure (kept in the archived record)
ticket: str = ""  # the incident or change ticket this run belongs to
database_url_env: str = "POTATO_DATABASE_URL"  # NAME of the variable holding the database URL, never a URL

# %% [markdown]
# ## Check the parameters, open the database

# %%
from potato_ops.runbook.params import check_monitoring_audit

params = check_monitoring_audit(
    since=since,
    slow_threshold_ms=slow_threshold_ms,
    scan=scan,
    top_slow_users=top_slow_users,
    alert_rules=alert_rules,
    operator=operator,
    ticket=ticket,
    database_url_env=database_url_env,
)
params

# %%
from potato_ops.notebook_runs.result import record_result
from potato_ops.runbook.monitoring_audit import (
    affected_timezones_chart,
    audit_metrics,
    audit_verdict,
    duration_chart,
    evaluate_alerts,
    lengths_chart,
    slowest_chart,
    success_chart,
    violations_chart,
)
from potato_ops.runbook.session import open_session, safety_checklist

session = open_session(params.common)
session

# %% [markdown]
# ## Safety checklist

# %%
safety_checklist(session, "monitoring audit", dry_run=None)

# %% [markdown]
# ## Key metrics

# %%
figures = audit_metrics(session, params)
figures

# %%
figures.frame()

# %% [markdown]
# ## Alerts

# %%
alerts = evaluate_alerts(params, figures)
alerts

# %%
alerts.frame()

# %% [markdown]
# ## Rebuilds: durations, success rate, slowest users

# %%
duration_chart(figures)

# %%
success_chart(figures)

# %%
slowest_chart(figures, params.top_slow_users)

# %% [markdown]
# ## Invariants: violations, run lengths, timezones of affected users

# %%
violations_chart(figures)

# %%
lengths_chart(session)

# %%
affected_timezones_chart(session, figures)

# %%
figures.violations_frame()

# %% [markdown]
# ## Verdict

# %%
verdict = audit_verdict(params, figures, alerts)
verdict

# %%
record_result(
    verdict.text,
    status=verdict.status,
    figures=verdict.figures,
    operation_ids=verdict.operation_ids,
    database=session.record(),
)
