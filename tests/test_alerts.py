from __future__ import annotations

import json
import shlex
from pathlib import Path
from textwrap import dedent

import pytest

from potato_ops.errors import PotatoOpsError, RuleError
from potato_ops.monitoring.alerts import (
    SEVERITIES,
    AlertRule,
    FiringAlert,
    default_rules,
    evaluate,
    highest_severity,
    load_rules,
    parse_condition,
    parse_rules,
)
from potato_ops.monitoring.conditions import Absent, And, Comparison, Condition, Or, condition_metrics
from potato_ops.monitoring.names import METRIC_HELP, METRIC_NAMES

HEALTHY: dict[str, float | int | None] = {name: 0 for name in METRIC_NAMES} | {
    "rebuild_success_rate": 1.0,
    "rebuild_count": 120,
    "rebuild_avg_duration_ms": 250.0,
}

FAILURE_RATE = "Rebuild Failure Rate High"
SLOW = "Rebuild Performance Slow"
SCAN = "Invariant Violations Found By Scan"
STALE = "Stale Active Flags"
VIOLATIONS = "Invariant Violations"
SCAN_STALE = "Invariant Scan Stale"
AUDIT_STALE = "Audit Stale"
ABSENT = "Scan Figures Absent"


def rule(condition: str, name: str = "r", severity: str = "P1") -> AlertRule:
    return AlertRule(name, parse_condition(condition), condition, severity, line=1)


def cmp(metric: str, op: str, threshold: float) -> Comparison:
    return Comparison(metric, op, threshold)


# --- metric names ------------------------------------------------------------------------------


def test_metric_names_are_the_documented_ones() -> None:
    assert METRIC_NAMES == (
        "rebuild_success_rate",
        "rebuild_failure_rate",
        "rebuild_count",
        "rebuild_avg_duration_ms",
        "rebuild_p50_duration_ms",
        "rebuild_p95_duration_ms",
        "rebuild_max_duration_ms",
        "users_processed",
        "rebuild_invariant_violations",
        "invariant_violations",
        "users_with_violations",
        "stale_active_flags",
        "timezone_changes_pending",
        "slow_users",
        "backups_count",
        "backup_oldest_age_hours",
        "backup_newest_age_hours",
        "operations_failed",
        "operations_interrupted",
        "last_scan_age_seconds",
        "last_audit_age_seconds",
    )
    assert set(METRIC_HELP) == set(METRIC_NAMES)
    assert all(text.strip() and "\n" not in text for text in METRIC_HELP.values())


# --- the shipped defaults ----------------------------------------------------------------------


def test_default_file_holds_the_playbooks_three_rules_then_the_scan_rules() -> None:
    rules = default_rules()
    assert [(r.name, r.condition_text, r.severity, r.line) for r in rules] == [
        (FAILURE_RATE, "rebuild_success_rate < 0.99", "P1", 8),
        (SLOW, "rebuild_avg_duration_ms > 1000", "P2", 16),
        (VIOLATIONS, "rebuild_invariant_violations > 0", "P0", 24),
        (SCAN, "invariant_violations > 0", "P0", 31),
        (STALE, "stale_active_flags > 0", "P0", 38),
        (SCAN_STALE, "last_scan_age_seconds > 7200", "P1", 45),
        (AUDIT_STALE, "last_audit_age_seconds > 7200", "P1", 52),
        (ABSENT, "absent(invariant_violations) or absent(last_scan_age_seconds)", "P1", 59),
    ]
    assert [r.condition for r in rules] == [
        cmp("rebuild_success_rate", "<", 0.99),
        cmp("rebuild_avg_duration_ms", ">", 1000),
        cmp("rebuild_invariant_violations", ">", 0),
        cmp("invariant_violations", ">", 0),
        cmp("stale_active_flags", ">", 0),
        cmp("last_scan_age_seconds", ">", 7200),
        cmp("last_audit_age_seconds", ">", 7200),
        Or((Absent("invariant_violations"), Absent("last_scan_age_seconds"))),
    ]
    assert [(r.for_duration, r.annotations["runbook_url"]) for r in rules] == [
        ("15m", "notebooks/05_error_recovery.ipynb"),
        ("30m", "notebooks/08_troubleshooting.ipynb"),
        ("0s", "notebooks/05_error_recovery.ipynb"),
        ("0s", "notebooks/05_error_recovery.ipynb"),
        ("0s", "notebooks/08_troubleshooting.ipynb"),
        ("0s", "notebooks/07_monitoring_audit.ipynb"),
        ("0s", "notebooks/07_monitoring_audit.ipynb"),
        ("10m", "notebooks/07_monitoring_audit.ipynb"),
    ]


def test_default_file_on_disk_matches_the_packaged_one() -> None:
    path = Path(__file__).parent.parent / "potato_ops" / "default_alerts.yaml"
    assert load_rules(path) == default_rules()


@pytest.mark.parametrize(
    ("overrides", "firing"),
    [
        pytest.param({}, [], id="healthy"),
        pytest.param({"rebuild_success_rate": 0.99}, [], id="success-rate-at-threshold"),
        pytest.param({"rebuild_success_rate": 0.989}, [FAILURE_RATE], id="success-rate-below"),
        pytest.param({"rebuild_success_rate": None}, [], id="success-rate-no-data"),
        pytest.param({"rebuild_avg_duration_ms": 1000}, [], id="duration-at-threshold"),
        pytest.param({"rebuild_avg_duration_ms": 1000.5}, [SLOW], id="duration-above"),
        pytest.param({"rebuild_avg_duration_ms": None}, [], id="duration-no-data"),
        pytest.param({"rebuild_invariant_violations": 0}, [], id="no-violations"),
        pytest.param({"rebuild_invariant_violations": 1}, [VIOLATIONS], id="one-violation"),
        pytest.param({"invariant_violations": 1}, [SCAN], id="scan-finds-one"),
        # A scan never recorded: nothing to compare, but the absence itself is an alert.
        pytest.param({"invariant_violations": None}, [ABSENT], id="scan-never-recorded"),
        pytest.param({"last_scan_age_seconds": 7200}, [], id="scan-age-at-threshold"),
        pytest.param({"last_scan_age_seconds": 7201}, [SCAN_STALE], id="scan-too-old"),
        pytest.param({"last_scan_age_seconds": None}, [ABSENT], id="scan-time-unknown"),
        pytest.param({"last_audit_age_seconds": 7201}, [AUDIT_STALE], id="audit-too-old"),
        pytest.param({"last_audit_age_seconds": None}, [], id="audit-never-recorded"),
        pytest.param({"stale_active_flags": 1}, [STALE], id="one-stale-flag"),
        pytest.param(
            {"rebuild_success_rate": 0.5, "rebuild_avg_duration_ms": 5000},
            [FAILURE_RATE, SLOW],
            id="p1-before-p2",
        ),
        pytest.param(
            {
                "rebuild_success_rate": 0.5,
                "rebuild_avg_duration_ms": 5000,
                "rebuild_invariant_violations": 3,
            },
            [VIOLATIONS, FAILURE_RATE, SLOW],
            id="all-most-severe-first",
        ),
    ],
)
def test_default_rules_fire_exactly_past_their_thresholds(
    overrides: dict[str, float | int | None], firing: list[str]
) -> None:
    alerts = evaluate(default_rules(), HEALTHY | overrides)
    assert [alert.name for alert in alerts] == firing


def test_firing_alert_carries_the_values_it_read() -> None:
    alerts = evaluate(default_rules(), HEALTHY | {"rebuild_success_rate": 0.9})
    assert alerts == [
        FiringAlert(FAILURE_RATE, "P1", "rebuild_success_rate < 0.99", {"rebuild_success_rate": 0.9})
    ]


# --- parsing conditions ------------------------------------------------------------------------

A = cmp("rebuild_count", ">", 1)
B = cmp("slow_users", ">", 2)
C = cmp("backups_count", "<", 3)


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        pytest.param("rebuild_count > 1", A, id="single"),
        pytest.param("  rebuild_count>1  ", A, id="no-spaces"),
        pytest.param("(rebuild_count > 1)", A, id="parenthesised"),
        pytest.param("((rebuild_count > 1))", A, id="double-parens"),
        pytest.param("rebuild_count > 1 and slow_users > 2 and backups_count < 3", And((A, B, C)), id="and"),
        pytest.param("rebuild_count > 1 or slow_users > 2 or backups_count < 3", Or((A, B, C)), id="or"),
        pytest.param(
            "rebuild_count > 1 or slow_users > 2 and backups_count < 3",
            Or((A, And((B, C)))),
            id="and-binds-tighter-right",
        ),
        pytest.param(
            "rebuild_count > 1 and slow_users > 2 or backups_count < 3",
            Or((And((A, B)), C)),
            id="and-binds-tighter-left",
        ),
        pytest.param(
            "(rebuild_count > 1 or slow_users > 2) and backups_count < 3",
            And((Or((A, B)), C)),
            id="parens-override",
        ),
        pytest.param(
            "rebuild_count > 1 and (slow_users > 2 or backups_count < 3)",
            And((A, Or((B, C)))),
            id="parens-right",
        ),
        pytest.param("absent(slow_users)", Absent("slow_users"), id="absent"),
        pytest.param(
            "absent ( slow_users ) or rebuild_count > 1", Or((Absent("slow_users"), A)), id="absent-or"
        ),
    ],
)
def test_parse_condition_builds_the_tree(text: str, tree: Condition) -> None:
    assert parse_condition(text) == tree


@pytest.mark.parametrize("op", ["<", "<=", ">", ">=", "==", "!="])
def test_parse_condition_reads_every_operator(op: str) -> None:
    assert parse_condition(f"slow_users {op} 4") == cmp("slow_users", op, 4)


@pytest.mark.parametrize(
    ("number", "value"),
    [
        pytest.param("0", 0.0, id="zero"),
        pytest.param("42", 42.0, id="int"),
        pytest.param("-3", -3.0, id="negative"),
        pytest.param("+2.5", 2.5, id="plus-sign"),
        pytest.param("0.99", 0.99, id="float"),
        pytest.param(".5", 0.5, id="leading-dot"),
        pytest.param("5.", 5.0, id="trailing-dot"),
        pytest.param("1e3", 1000.0, id="exponent"),
        pytest.param("1.5E-2", 0.015, id="negative-exponent"),
        pytest.param("-2e+2", -200.0, id="signed-exponent"),
    ],
)
def test_parse_condition_reads_numbers(number: str, value: float) -> None:
    assert parse_condition(f"slow_users >= {number}") == cmp("slow_users", ">=", value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("", "expected a metric name or '(' at column 1, found end", id="empty"),
        pytest.param("rebuild_count", "expected a comparison operator", id="missing-operator-and-number"),
        pytest.param("rebuild_count >", "expected a number after '>' at column 16", id="missing-number"),
        pytest.param("rebuild_count > slow_users", "expected a number", id="metric-vs-metric"),
        pytest.param("rebuild_count >> 5", "expected a number after '>'", id="doubled-operator"),
        pytest.param("rebuild_count = 5", "did you mean '=='?", id="single-equals"),
        pytest.param("5 < rebuild_count", "expected a metric name or '('", id="number-first"),
        pytest.param("rebuild_count > - 1", "unexpected character '-'", id="detached-sign"),
        pytest.param("rebuild_count > 5abc", "malformed number '5abc'", id="number-with-tail"),
        pytest.param("rebuild_count > 1.2.3", "malformed number '1.2.3'", id="two-dots"),
        pytest.param("rebuild_count > 1_000", "malformed number", id="underscore"),
        pytest.param("rebuild_count > 1e999", "out of range", id="overflow"),
        pytest.param("rebuild_count > nan", "expected a number", id="nan"),
        pytest.param("rebuld_count > 1", "did you mean 'rebuild_count'?", id="typo-metric"),
        pytest.param("bogus > 1", "unknown metric 'bogus' at column 1", id="unknown-metric"),
        pytest.param("(rebuild_count > 1", "expected ')'", id="unclosed-paren"),
        pytest.param("rebuild_count > 1)", "unbalanced ')'", id="extra-paren"),
        pytest.param("()", "expected a metric name or '(' at column 2", id="empty-parens"),
        pytest.param("rebuild_count > 1 and", "found end of condition", id="dangling-and"),
        pytest.param("or rebuild_count > 1", "expected a metric name", id="leading-or"),
        pytest.param("rebuild_count > 1 slow_users > 2", "expected 'and', 'or'", id="missing-connective"),
        pytest.param("rebuild_count > 1 AND slow_users > 2", "found 'AND'", id="uppercase-and"),
        pytest.param("rebuild_count > 1 && slow_users > 2", "unexpected character '&'", id="&&"),
        pytest.param("not rebuild_count > 1", "unknown metric 'not'", id="not"),
        pytest.param("__import__('os').system('true') > 1", "unexpected character", id="code"),
        pytest.param("(" * 100 + "rebuild_count > 1" + ")" * 100, "nested deeper", id="deep"),
        pytest.param("absent slow_users", "expected '(' after 'absent'", id="absent-without-parens"),
        pytest.param("absent(bogus)", "unknown metric 'bogus'", id="absent-unknown-metric"),
        pytest.param("absent(slow_users", "expected ')'", id="absent-unclosed"),
        pytest.param("absent(slow_users) > 1", "expected 'and', 'or'", id="absent-compared"),
        pytest.param("absent > 1", "expected '(' after 'absent'", id="absent-as-a-metric"),
    ],
)
def test_parse_condition_refuses_malformed_text(text: str, message: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_condition(text)
    assert message in str(caught.value)
    assert caught.value.line is None


# --- evaluating conditions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "value", "fires"),
    [
        pytest.param("slow_users < 10", 9, True, id="lt-below"),
        pytest.param("slow_users < 10", 10, False, id="lt-at"),
        pytest.param("slow_users <= 10", 10, True, id="le-at"),
        pytest.param("slow_users <= 10", 10.5, False, id="le-above"),
        pytest.param("slow_users > 10", 10.5, True, id="gt-above"),
        pytest.param("slow_users > 10", 10, False, id="gt-at"),
        pytest.param("slow_users >= 10", 10, True, id="ge-at"),
        pytest.param("slow_users >= 10", 9.5, False, id="ge-below"),
        pytest.param("slow_users == 10", 10, True, id="eq-at"),
        pytest.param("slow_users == 10", 10.5, False, id="eq-off"),
        pytest.param("slow_users != 10", 10.5, True, id="ne-off"),
        pytest.param("slow_users != 10", 10, False, id="ne-at"),
        pytest.param("slow_users > -1", 0, True, id="negative-threshold"),
        pytest.param("slow_users < 10", None, False, id="lt-no-data"),
        pytest.param("slow_users > 10", None, False, id="gt-no-data"),
        pytest.param("slow_users == 10", None, False, id="eq-no-data"),
        pytest.param("slow_users != 10", None, False, id="ne-no-data"),
        pytest.param("slow_users != 10", float("nan"), False, id="ne-nan-is-no-data"),
        pytest.param("absent(slow_users)", None, True, id="absent-no-data"),
        pytest.param("absent(slow_users)", float("nan"), True, id="absent-nan"),
        pytest.param("absent(slow_users)", 0, False, id="absent-zero-is-a-value"),
    ],
)
def test_comparisons(condition: str, value: float | int | None, fires: bool) -> None:
    alerts = evaluate([rule(condition)], {"slow_users": value})
    assert bool(alerts) is fires


@pytest.mark.parametrize(
    ("condition", "metrics", "fires"),
    [
        pytest.param("slow_users > 1 and backups_count > 1", (2, 2, 0), True, id="and-both"),
        pytest.param("slow_users > 1 and backups_count > 1", (2, 0, 0), False, id="and-one"),
        pytest.param("slow_users > 1 or backups_count > 1", (0, 2, 0), True, id="or-one"),
        pytest.param("slow_users > 1 or backups_count > 1", (0, 0, 0), False, id="or-none"),
        pytest.param(
            "slow_users > 1 or backups_count > 1 and operations_failed > 1",
            (2, 0, 0),
            True,
            id="precedence-left-alone",
        ),
        pytest.param(
            "(slow_users > 1 or backups_count > 1) and operations_failed > 1",
            (2, 0, 0),
            False,
            id="parens-need-the-and",
        ),
        pytest.param(
            "(slow_users > 1 or backups_count > 1) and operations_failed > 1",
            (0, 2, 2),
            True,
            id="parens-satisfied",
        ),
        pytest.param(
            "slow_users > 1 and backups_count > 1 or operations_failed > 1",
            (0, 0, 2),
            True,
            id="precedence-right-alone",
        ),
        pytest.param(
            "slow_users > 1 and (backups_count > 1 or operations_failed > 1)",
            (0, 0, 2),
            False,
            id="parens-need-the-left",
        ),
        pytest.param("slow_users > 1 or backups_count > 1", (None, 2, 0), True, id="or-no-data"),
        pytest.param("slow_users < 1 and backups_count > 1", (None, 2, 0), False, id="and-no-data"),
    ],
)
def test_and_or_and_parentheses(
    condition: str, metrics: tuple[int | None, int | None, int | None], fires: bool
) -> None:
    values = dict(zip(("slow_users", "backups_count", "operations_failed"), metrics, strict=True))
    assert bool(evaluate([rule(condition)], values)) is fires


def test_values_hold_every_metric_the_condition_reads_even_without_data() -> None:
    condition = "rebuild_success_rate < 0.99 or rebuild_count > 5 or rebuild_success_rate != 1"
    alerts = evaluate(
        [rule(condition, name="mixed", severity="P2")],
        HEALTHY | {"rebuild_success_rate": None, "rebuild_count": 6},
    )
    assert alerts == [
        FiringAlert("mixed", "P2", condition, {"rebuild_success_rate": None, "rebuild_count": 6.0})
    ]


def test_condition_metrics_lists_each_metric_once_in_order() -> None:
    tree = parse_condition("slow_users > 1 or (backups_count > 1 and slow_users < 9)")
    assert condition_metrics(tree) == ("slow_users", "backups_count")


def test_metric_missing_from_the_mapping_is_an_error_with_the_rule_line() -> None:
    rules = parse_rules("alerts:\n" + _entry("a", "slow_users > 1 or backups_count > 1", "P1"))
    with pytest.raises(RuleError) as caught:
        evaluate(rules, {"slow_users": 5})
    assert caught.value.line == 2
    assert "backups_count" in str(caught.value)


def test_evaluate_keeps_file_order_within_a_severity() -> None:
    rules = [
        rule("slow_users > 0", name="first", severity="P2"),
        rule("slow_users > 0", name="second", severity="P0"),
        rule("slow_users > 0", name="third", severity="P2"),
        rule("slow_users > 0", name="fourth", severity="P0"),
    ]
    alerts = evaluate(rules, {"slow_users": 1})
    assert [alert.name for alert in alerts] == ["second", "fourth", "first", "third"]


@pytest.mark.parametrize(
    ("severities", "highest"),
    [
        pytest.param([], None, id="none"),
        pytest.param(["P2"], "P2", id="one"),
        pytest.param(["P2", "P1", "P2"], "P1", id="p1"),
        pytest.param(["P2", "P0", "P1"], "P0", id="p0"),
    ],
)
def test_highest_severity(severities: list[str], highest: str | None) -> None:
    alerts = [FiringAlert(f"a{i}", s, "slow_users > 0", {}) for i, s in enumerate(severities)]
    assert highest_severity(alerts) == highest
    assert SEVERITIES == ("P0", "P1", "P2")


def test_alert_rule_refuses_an_unknown_severity() -> None:
    with pytest.raises(RuleError) as caught:
        AlertRule("x", parse_condition("slow_users > 0"), "slow_users > 0", "P3", line=7)
    assert caught.value.line == 7


# --- rules files -------------------------------------------------------------------------------


def _entry(name: str, condition: str, severity: str) -> str:
    return f'  - name: "{name}"\n    condition: "{condition}"\n    severity: "{severity}"\n'


GOOD = "alerts:\n" + _entry("One", "slow_users > 1", "P1")


def test_parse_rules_reads_every_form_of_value() -> None:
    text = dedent(
        """\
        # operators' rules
        alerts:
          - name: Plain
            condition: slow_users > 1
            severity: P2
          - {name: 'Flow', condition: 'backups_count < 1 or backup_newest_age_hours > 26',
             severity: P0}
          - name: Folded
            condition: >-
              rebuild_count > 10
              and rebuild_failure_rate >= 0.05
            severity: P1
        """
    )
    assert parse_rules(text) == [
        AlertRule("Plain", cmp("slow_users", ">", 1), "slow_users > 1", "P2", 3),
        AlertRule(
            "Flow",
            Or((cmp("backups_count", "<", 1), cmp("backup_newest_age_hours", ">", 26))),
            "backups_count < 1 or backup_newest_age_hours > 26",
            "P0",
            6,
        ),
        AlertRule(
            "Folded",
            And((cmp("rebuild_count", ">", 10), cmp("rebuild_failure_rate", ">=", 0.05))),
            "rebuild_count > 10 and rebuild_failure_rate >= 0.05",
            "P1",
            8,
        ),
    ]


def test_an_empty_alerts_list_is_no_rules() -> None:
    assert parse_rules("alerts: []\n") == []


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        pytest.param(
            GOOD + _entry("Two", "no_such_metric > 1", "P1"),
            6,
            "unknown metric 'no_such_metric'",
            id="unknown-metric",
        ),
        pytest.param(
            GOOD + _entry("Two", "slow_users >", "P1"),
            6,
            "expected a number after '>' at column 13",
            id="malformed-condition",
        ),
        pytest.param(
            "alerts:\n  - name: x\n    condition: >\n      slow_users > 1 and\n    severity: P1\n",
            4,
            "expected a metric name",
            id="malformed-block-condition",
        ),
        pytest.param(GOOD + _entry("Two", "slow_users > 1", "P3"), 7, "unknown severity 'P3'", id="P3"),
        pytest.param(GOOD + _entry("Two", "slow_users > 1", "high"), 7, "expected one of P0", id="word"),
        pytest.param(GOOD + _entry("Two", "slow_users > 1", "p1"), 7, "unknown severity", id="lowercase"),
        pytest.param(
            GOOD + "  - condition: slow_users > 1\n    severity: P1\n",
            5,
            "missing 'name'",
            id="missing-name",
        ),
        pytest.param(GOOD + _entry("  ", "slow_users > 1", "P1"), 5, "'name' is empty", id="empty-name"),
        pytest.param(
            GOOD + _entry("One", "slow_users > 2", "P2"),
            5,
            "duplicate alert name 'One'",
            id="duplicate-name",
        ),
        pytest.param(
            GOOD + "  - name: Two\n    severity: P1\n",
            5,
            "missing 'condition'",
            id="missing-condition",
        ),
        pytest.param(
            GOOD + "  - name: Two\n    condition: slow_users > 1\n",
            5,
            "missing 'severity'",
            id="missing-severity",
        ),
        pytest.param(GOOD + "  - name: Two\n", 5, "missing 'condition', 'severity'", id="missing-two"),
        pytest.param(GOOD + "  - {}\n", 5, "missing 'name', 'condition'", id="empty-entry"),
        pytest.param(
            GOOD + _entry("Two", "slow_users > 1", "P1") + "    runbook: docs/x.md\n",
            8,
            "unknown key 'runbook'",
            id="unknown-key",
        ),
        pytest.param(
            GOOD + "  - name: Two\n    sevrity: P1\n",
            6,
            "did you mean 'severity'?",
            id="misspelt-key",
        ),
        pytest.param(
            GOOD + _entry("Two", "slow_users > 1", "P1") + "    severity: P0\n",
            8,
            "duplicate key 'severity'",
            id="duplicate-key",
        ),
        pytest.param(
            GOOD + "  - name: Two\n    condition: 5\n    severity: P1\n",
            6,
            "must be a string, found !!int",
            id="number-condition",
        ),
        pytest.param(
            GOOD + "  - name: Two\n    condition: slow_users > 1\n    severity:\n",
            7,
            "has no value",
            id="null-severity",
        ),
        pytest.param(
            GOOD + "  - name: [a, b]\n    condition: slow_users > 1\n    severity: P1\n",
            5,
            "must be a string, found a list",
            id="list-name",
        ),
        pytest.param(GOOD + "  - just a string\n", 5, "must be a mapping", id="entry-string"),
        pytest.param("", 1, "the rules file is empty", id="empty-file"),
        pytest.param("# only a comment\n", 1, "the rules file is empty", id="comment-only"),
        pytest.param("- name: x\n", 1, "top level must be a mapping", id="top-level-list"),
        pytest.param("alerts\n", 1, "top level must be a mapping", id="top-level-scalar"),
        pytest.param("rules: []\n", 1, "unknown key 'rules'", id="wrong-top-key"),
        pytest.param("{}\n", 1, "'alerts:' is missing", id="no-alerts-key"),
        pytest.param(GOOD + "extra: 1\n", 5, "unknown key 'extra'", id="extra-top-key"),
        pytest.param(GOOD + "alerts: []\n", 5, "duplicate key 'alerts'", id="alerts-twice"),
        pytest.param("\n\nalerts:\n", 3, "must hold a list", id="alerts-null"),
        pytest.param("alerts:\n  name: x\n", 2, "must hold a list", id="alerts-mapping"),
        pytest.param(
            GOOD + "  - name: Two\n    condition: [unclosed\n    severity: P1\n",
            7,
            "not valid YAML",
            id="yaml-syntax",
        ),
        pytest.param(GOOD + "  - name: Two\n   condition: x\n", 6, "not valid YAML", id="yaml-indent"),
        pytest.param("alerts:\n\t- name: x\n", 2, "not valid YAML", id="yaml-tab"),
        pytest.param("alerts: []\n---\nalerts: []\n", 2, "single document", id="two-documents"),
        pytest.param("alerts: []\n\x07\n", 2, "not valid YAML", id="control-character"),
        pytest.param(
            GOOD + "  - name: Two\n    condition: !!binary aGk=\n    severity: P1\n",
            6,
            "!!binary",
            id="binary-tag",
        ),
        pytest.param(
            GOOD + "  - name: !custom Two\n    condition: slow_users > 1\n    severity: P1\n",
            5,
            "YAML tag !custom is not allowed",
            id="local-tag",
        ),
    ],
)
def test_malformed_files_are_refused_with_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rules(text)
    assert caught.value.line == line
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"line {line}: ")


def test_load_rules_reads_a_path_or_a_string(tmp_path: Path) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text(GOOD, encoding="utf-8")
    expected = [AlertRule("One", cmp("slow_users", ">", 1), "slow_users > 1", "P1", 2)]
    assert load_rules(path) == expected
    assert load_rules(str(path)) == expected


def test_load_rules_passes_the_line_through(tmp_path: Path) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text(GOOD + _entry("Two", "slow_users > 1", "P9"), encoding="utf-8")
    with pytest.raises(RuleError) as caught:
        load_rules(path)
    assert caught.value.line == 7


@pytest.mark.parametrize(
    "content",
    [pytest.param(None, id="missing"), pytest.param(b"alerts: \xff\n", id="not-utf8")],
)
def test_load_rules_refuses_an_unreadable_file(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "alerts.yaml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(RuleError) as caught:
        load_rules(path)
    assert caught.value.line is None
    assert isinstance(caught.value, PotatoOpsError)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("template", "line"),
    [
        pytest.param("{tag}\n", 1, id="whole-document"),
        pytest.param("alerts: {tag}\n", 1, id="alerts-value"),
        pytest.param("alerts:\n  - {tag}\n", 2, id="entry"),
        pytest.param("alerts:\n  - name: x\n    condition: {tag}\n    severity: P1\n", 3, id="condition"),
        pytest.param(
            "alerts:\n  - name: {tag}\n    condition: slow_users > 1\n    severity: P1\n",
            2,
            id="name",
        ),
        pytest.param(
            "alerts:\n  - ? {tag}\n    : x\n    condition: slow_users > 1\n    severity: P1\n",
            2,
            id="key",
        ),
    ],
)
def test_python_tags_construct_nothing(tmp_path: Path, template: str, line: int) -> None:
    marker = tmp_path / "marker"
    command = json.dumps(f"touch {shlex.quote(str(marker))}")
    tag = f"!!python/object/apply:os.system [{command}]"
    path = tmp_path / "alerts.yaml"
    path.write_text(template.format(tag=tag), encoding="utf-8")

    with pytest.raises(RuleError) as caught:
        load_rules(path)

    assert not marker.exists()
    assert caught.value.line == line
    assert "!!python/object/apply:os.system is not allowed" in str(caught.value)


# --- the Prometheus keys: for, labels, annotations ----------------------------------------------


def test_for_labels_and_annotations_are_read() -> None:
    [rule] = parse_rules(
        dedent(
            """\
            alerts:
              - name: "Slow"
                condition: "slow_users > 0"
                severity: P2
                for: 1h30m
                labels: {team: potato, tier: "2"}
                annotations:
                  runbook_url: notebooks/08_troubleshooting.ipynb
            """
        )
    )
    assert (rule.for_duration, dict(rule.labels), dict(rule.annotations)) == (
        "1h30m",
        {"team": "potato", "tier": "2"},
        {"runbook_url": "notebooks/08_troubleshooting.ipynb"},
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("    for: 5 minutes\n", "line 5: 'for' of alert 'R' must be a Prometheus duration such as 5m"),
        ("    for: 5\n", "line 5: 'for' of alert 'R' must be a string, found !!int '5'"),
        ("    labels: [a]\n", "line 5: 'labels' of alert 'R' must be a mapping of names to strings"),
        ("    labels: {severity: P0}\n", "line 5: 'labels' of alert 'R' may not set severity"),
        ("    labels: {bad-name: x}\n", "line 5: 'bad-name' in 'labels' of alert 'R' is not a valid name"),
        ("    labels: {__x: y}\n", "line 5: '__x' in 'labels' of alert 'R' is not a valid name"),
        ("    annotations: {summary: [x]}\n", "line 5: annotations.summary of alert 'R' must be a string"),
    ],
    ids=[
        "for-words",
        "for-number",
        "labels-list",
        "labels-severity",
        "labels-dash",
        "labels-dunder",
        "annot-list",
    ],
)
def test_bad_prometheus_keys_name_their_line(extra: str, message: str) -> None:
    text = 'alerts:\n  - name: R\n    condition: "slow_users > 0"\n    severity: P2\n' + extra
    with pytest.raises(RuleError) as caught:
        parse_rules(text)
    assert str(caught.value).startswith(message)
