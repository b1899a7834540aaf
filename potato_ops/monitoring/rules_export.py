"""Alert rules compiled into a Prometheus rules file: one group, one alerting rule per entry.

Each condition becomes PromQL over the exposed gauge names (``names.EXPOSED``), its threshold
converted into the exposed unit (``rebuild_avg_duration_ms > 1000`` becomes
``potato_ops_rebuild_duration_mean_seconds > 1``). PromQL's comparison keeps only the series
for which it holds, and an absent series (a figure without data) yields nothing, so a rule fires
in Prometheus exactly when the audit, given the same figures, says it fires; ``absent(m)``
becomes PromQL's ``absent()``, which fires when no such series is scraped at all. An age
(``last_scan_age_seconds``) is read as ``time() - <its timestamp gauge>``, so it keeps growing
when the writer stops. ``and`` binds tighter than ``or`` in both grammars; parentheses are kept
where the tree needs them.

Options of the export: a ``job`` matcher on every selector (two scrape jobs reading the same
figures must not double every alert), extra labels on every rule (``env``, ``team``), and a
base URL that makes the runbook links absolute. Each rule's description says, in words, what
the figure is and its value (``{{ $value }}``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from potato_ops.errors import ConfigError
from potato_ops.monitoring.alerts import AlertRule
from potato_ops.monitoring.conditions import Absent, And, Comparison, Condition, Or
from potato_ops.monitoring.names import EXPOSED, METRIC_HELP, ExposedName

GROUP_NAME = "potato-ops"
ALERT_PREFIX = "PotatoOps"


def alert_name(name: str) -> str:
    """Return the rule's name as a Prometheus alert name: ``PotatoOpsRebuildFailureRateHigh``."""
    words = re.findall(r"[A-Za-z0-9]+", name)
    return ALERT_PREFIX + "".join(word[0].upper() + word[1:] for word in words)


def _number(value: float) -> str:
    # repr is the shortest text that reads back as the same float; PromQL reads it too.
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def matchers(job: str | None) -> str:
    """Return the label matchers every selector carries: ``{job="x"}``, or nothing."""
    if job is None:
        return ""
    if not job or any(ord(ch) < 32 for ch in job):
        raise ConfigError(f"--job {job!r}: expected a scrape job's name")
    escaped = job.replace("\\", "\\\\").replace('"', '\\"')
    return f'{{job="{escaped}"}}'


def promql(condition: Condition, selector: str = "") -> str:
    """Return the PromQL expression of a condition over the exposed gauge names."""
    if isinstance(condition, Comparison):
        exposed = EXPOSED[condition.metric]
        return f"{exposed.promql(selector)} {condition.op} {_number(condition.threshold * exposed.scale)}"
    if isinstance(condition, Absent):
        return f"absent({EXPOSED[condition.metric].name}{selector})"
    if isinstance(condition, And):
        return " and ".join(
            f"({promql(operand, selector)})" if isinstance(operand, Or) else promql(operand, selector)
            for operand in condition.operands
        )
    return " or ".join(promql(operand, selector) for operand in condition.operands)


# --- descriptions in words ------------------------------------------------------------------------

_OP_WORDS = {
    "<": "below",
    "<=": "at or below",
    ">": "above",
    ">=": "at or above",
    "==": "equal to",
    "!=": "other than",
}


def _seconds_words(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def _what(exposed: ExposedName, metric: str) -> str:
    if exposed.age:
        return "time " + METRIC_HELP[metric].removeprefix("seconds ")
    text = exposed.help.rstrip(".").replace("Share 0..1 of", "Share of")
    return text[:1].lower() + text[1:]


def _value_words(exposed: ExposedName, value: float | None) -> str:
    """Return a threshold in the exposed unit as words, or (None) the alert's value template."""
    if exposed.name.endswith("_ratio"):
        return "{{ $value | humanizePercentage }}" if value is None else f"{value * 100:g}%"
    if exposed.age or exposed.name.endswith("_seconds"):
        return "{{ $value | humanizeDuration }}" if value is None else _seconds_words(value)
    return "{{ $value }}" if value is None else _number(value)


def condition_words(condition: Condition, selector: str = "") -> str:
    """Return the condition in words, over what the figures mean (no internal names)."""
    if isinstance(condition, Comparison):
        exposed = EXPOSED[condition.metric]
        threshold = _value_words(exposed, condition.threshold * exposed.scale)
        return f"{_what(exposed, condition.metric)} is {_OP_WORDS[condition.op]} {threshold}"
    if isinstance(condition, Absent):
        return f"no {EXPOSED[condition.metric].name}{selector} series is scraped"
    joiner = " and " if isinstance(condition, And) else " or "
    return joiner.join(
        f"({condition_words(o, selector)})" if isinstance(o, And | Or) else condition_words(o, selector)
        for o in condition.operands
    )


def _absent_operands(condition: Condition) -> list[Absent] | None:
    if isinstance(condition, Absent):
        return [condition]
    if isinstance(condition, Or) and all(isinstance(o, Absent) for o in condition.operands):
        return [o for o in condition.operands if isinstance(o, Absent)]
    return None


def description(rule: AlertRule, selector: str = "") -> str:
    """Return the rule's description: what fired, in words, with the value Prometheus saw."""
    condition = rule.condition
    if isinstance(condition, Comparison):
        exposed = EXPOSED[condition.metric]
        what = _what(exposed, condition.metric)
        return (
            f"{what[:1].upper()}{what[1:]}: {_value_words(exposed, None)} "
            f"({rule.severity} when {_OP_WORDS[condition.op]} "
            f"{_value_words(exposed, condition.threshold * exposed.scale)})."
        )
    absent = _absent_operands(condition)
    if absent is not None:
        names = " or ".join(f"{EXPOSED[a.metric].name}{selector}" for a in absent)
        return (
            f"No {names} series is scraped: the figures stopped reaching Prometheus (the metrics "
            "job, its textfile or the exporter is not running), so the alerts on them cannot fire."
        )
    return f"{rule.severity} when {condition_words(condition, selector)} (value {{{{ $value }}}})."


def _runbook_url(url: str, base: str) -> str:
    if not base or re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", url):
        return url
    return base.rstrip("/") + "/" + url.lstrip("/")


def prometheus_rule(
    rule: AlertRule,
    runbook_base_url: str = "",
    *,
    job: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Return one alerting rule as the mapping a Prometheus rules file holds.

    ``labels`` are added to the rule's own (which win); ``job`` matches every selector.
    """
    selector = matchers(job)
    annotations = {"summary": rule.name} | dict(rule.annotations)
    annotations.setdefault("description", description(rule, selector))
    if "runbook_url" in annotations:
        annotations["runbook_url"] = _runbook_url(annotations["runbook_url"], runbook_base_url)
    extra = dict(labels or {})
    reserved = sorted({"severity", "alertname"} & set(extra))
    if reserved:
        raise ConfigError(f"--label {reserved[0]}=...: the export sets {reserved[0]} itself")
    return {
        "alert": alert_name(rule.name),
        "expr": promql(rule.condition, selector),
        "for": rule.for_duration,
        "labels": {"severity": rule.severity} | extra | dict(rule.labels),
        "annotations": annotations,
    }


def prometheus_rules(
    rules: Iterable[AlertRule],
    runbook_base_url: str = "",
    *,
    job: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Return a Prometheus rules file's content: one group holding every rule, in file order."""
    return {
        "groups": [
            {
                "name": GROUP_NAME,
                "rules": [prometheus_rule(rule, runbook_base_url, job=job, labels=labels) for rule in rules],
            }
        ]
    }


def render_prometheus_rules(
    rules: Iterable[AlertRule],
    runbook_base_url: str = "",
    *,
    job: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """Return the Prometheus rules file as YAML text."""
    header = "# Generated by `potato-ops alerts export` from potato-ops alert rules; edit those instead.\n"
    body = yaml.safe_dump(
        prometheus_rules(rules, runbook_base_url, job=job, labels=labels),
        sort_keys=False,
        allow_unicode=True,
        width=1000,
    )
    return header + body
