"""Alert rules: load them from YAML, parse their conditions, and evaluate them against metrics.

A rules file is a mapping with one key, ``alerts``, holding a list of entries::

    alerts:
      - name: "Rebuild Failure Rate High"
        condition: "rebuild_success_rate < 0.99"
        severity: "P1"
        for: "15m"                      # optional, Prometheus only: how long it must hold
        labels: {team: "potato"}        # optional, extra Prometheus labels
        annotations:                    # optional, Prometheus annotations
          runbook_url: "notebooks/05_error_recovery.ipynb"

A condition compares a known metric (one of ``METRIC_NAMES``) with a number (``METRIC OP
NUMBER`` with OP one of ``< <= > >= == !=``) or asks that it have no value
(``absent(METRIC)``); these combine with ``and`` / ``or`` (``and`` binds tighter) and
parentheses. Conditions are parsed by ``potato_ops.monitoring.conditions``, whose public names
are re-exported here; nothing in a rules file is ever executed, and YAML tags never construct
objects. ``for``, ``labels`` and ``annotations`` matter only to the Prometheus rules that
``potato_ops.monitoring.rules_export`` compiles; the audit evaluates the condition now.

A rules file is bounded (``MAX_RULES_BYTES``, ``MAX_RULES``): a rules file is a page of
configuration, and an unbounded one would tie up the audit for minutes.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources

import yaml
from yaml.reader import ReaderError

from potato_ops.errors import RuleError
from potato_ops.monitoring import conditions
from potato_ops.monitoring.conditions import (
    Absent,
    And,
    Condition,
    Or,
    condition_metrics,
    suggestion,
)
from potato_ops.monitoring.names import METRIC_NAMES

SEVERITIES: tuple[str, ...] = ("P0", "P1", "P2")


DEFAULT_RULES_RESOURCE = "default_alerts.yaml"

_REQUIRED_KEYS: tuple[str, ...] = ("name", "condition", "severity")
_RULE_KEYS: tuple[str, ...] = (*_REQUIRED_KEYS, "for", "labels", "annotations")
MAX_RULES_BYTES = 256 * 1024
MAX_RULES = 1000
DEFAULT_FOR = "0s"
# Prometheus's duration grammar (units largest first, each at most once) and label names.
_PROMETHEUS_DURATION = re.compile(r"(?:\d+y)?(?:\d+w)?(?:\d+d)?(?:\d+h)?(?:\d+m)?(?:\d+s)?(?:\d+ms)?")
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Labels the export sets itself.
_RESERVED_LABELS = frozenset({"severity", "alertname"})
_TOP_LEVEL_KEY = "alerts"

_YAML_TAG_PREFIX = "tag:yaml.org,2002:"
_STR_TAG = _YAML_TAG_PREFIX + "str"
_MAP_TAG = _YAML_TAG_PREFIX + "map"
_SEQ_TAG = _YAML_TAG_PREFIX + "seq"
_NULL_TAG = _YAML_TAG_PREFIX + "null"


@dataclass(frozen=True)
class AlertRule:
    """One entry of a rules file; ``line`` is the 1-based line where the entry starts."""

    name: str
    condition: Condition
    condition_text: str
    severity: str
    line: int
    for_duration: str = DEFAULT_FOR
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise RuleError(
                f"alert {self.name!r}: unknown severity {self.severity!r}; "
                f"expected one of {', '.join(SEVERITIES)}",
                line=self.line,
            )


@dataclass(frozen=True)
class FiringAlert:
    """A rule whose condition held, with the values of the metrics its condition reads."""

    name: str
    severity: str
    condition: str
    values: dict[str, float | None]

    def values_text(self) -> str:
        """Return the values the condition read, as ``metric=value, ...`` (``no data`` for none)."""
        shown = {m: "no data" if v is None else f"{v:g}" for m, v in self.values.items()}
        return ", ".join(f"{metric}={value}" for metric, value in shown.items())


def parse_condition(text: str) -> Condition:
    """Return the syntax tree of a condition; RuleError (without a line) when it is malformed."""
    return conditions.parse_condition(text, METRIC_NAMES)


# --- rules files -------------------------------------------------------------------------------


def _line(node: yaml.Node) -> int:
    line = int(node.start_mark.line) + 1
    # A block scalar ("|" or ">") starts on the line after its indicator.
    if isinstance(node, yaml.ScalarNode) and node.style in ("|", ">"):
        line += 1
    return line


def _describe_tag(tag: str) -> str:
    if tag.startswith(_YAML_TAG_PREFIX):
        return "!!" + tag[len(_YAML_TAG_PREFIX) :]
    return tag


def _refuse_foreign_tag(node: yaml.Node) -> None:
    if not node.tag.startswith(_YAML_TAG_PREFIX) or node.tag[len(_YAML_TAG_PREFIX) :] not in {
        "str",
        "map",
        "seq",
        "int",
        "float",
        "bool",
        "null",
    }:
        raise RuleError(f"YAML tag {_describe_tag(node.tag)} is not allowed", line=_line(node))


def _string_value(node: yaml.Node, what: str) -> str:
    _refuse_foreign_tag(node)
    if isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG:
        raise RuleError(f"{what} has no value", line=_line(node))
    if not isinstance(node, yaml.ScalarNode) or node.tag != _STR_TAG:
        if isinstance(node, yaml.SequenceNode):
            found = "a list"
        elif isinstance(node, yaml.MappingNode):
            found = "a mapping"
        else:
            found = f"{_describe_tag(node.tag)} {node.value!r}"
        raise RuleError(f"{what} must be a string, found {found}", line=_line(node))
    return str(node.value)


def _mapping_entries(
    node: yaml.MappingNode, allowed: tuple[str, ...], where: str
) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """Return key -> (key node, value node), refusing unknown, duplicate and non-string keys."""
    entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        key = _string_value(key_node, f"a key {where}")
        if key not in allowed:
            raise RuleError(
                f"unknown key {key!r} {where}; expected {', '.join(allowed)}" + suggestion(key, allowed),
                line=_line(key_node),
            )
        if key in entries:
            raise RuleError(f"duplicate key {key!r} {where}", line=_line(key_node))
        entries[key] = (key_node, value_node)
    return entries


def _compose(text: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = "; ".join(part for part in (exc.context, exc.problem) if part)
        raise RuleError(
            f"not valid YAML: {detail or 'syntax error'}",
            line=mark.line + 1 if mark else None,
        ) from None
    except ReaderError as exc:
        position = exc.position if isinstance(exc.position, int) else None
        raise RuleError(
            f"not valid YAML: {exc.reason}",
            line=text.count("\n", 0, position) + 1 if position is not None else None,
        ) from None
    except yaml.YAMLError as exc:
        raise RuleError(f"not valid YAML: {exc}") from None
    except RecursionError:
        # The composer recurses once per nesting level; a rules file is never this deep.
        raise RuleError("not valid alert rules: YAML nested too deeply") from None


def _rule_from_node(node: yaml.Node, taken_names: set[str]) -> AlertRule:
    _refuse_foreign_tag(node)
    if not isinstance(node, yaml.MappingNode):
        raise RuleError(
            "each entry under 'alerts:' must be a mapping with name, condition and severity",
            line=_line(node),
        )
    entries = _mapping_entries(node, _RULE_KEYS, "in an alert entry")
    missing = [key for key in _REQUIRED_KEYS if key not in entries]
    if missing:
        raise RuleError(f"alert entry is missing {', '.join(repr(key) for key in missing)}", line=_line(node))

    name_node = entries["name"][1]
    name = _string_value(name_node, "'name'").strip()
    if not name:
        raise RuleError("'name' is empty", line=_line(name_node))
    if name in taken_names:
        raise RuleError(f"duplicate alert name {name!r}", line=_line(name_node))

    severity_node = entries["severity"][1]
    severity = _string_value(severity_node, f"'severity' of alert {name!r}").strip()
    if severity not in SEVERITIES:
        raise RuleError(
            f"unknown severity {severity!r} for alert {name!r}; expected one of {', '.join(SEVERITIES)}",
            line=_line(severity_node),
        )

    condition_node = entries["condition"][1]
    condition_text = _string_value(condition_node, f"'condition' of alert {name!r}").strip()
    try:
        condition = parse_condition(condition_text)
    except RuleError as exc:
        raise RuleError(f"alert {name!r}: {exc}", line=_line(condition_node)) from None

    for_duration = DEFAULT_FOR
    if "for" in entries:
        for_node = entries["for"][1]
        for_duration = _string_value(for_node, f"'for' of alert {name!r}").strip()
        if not for_duration or not _PROMETHEUS_DURATION.fullmatch(for_duration):
            raise RuleError(
                f"'for' of alert {name!r} must be a Prometheus duration such as 5m or 1h30m, "
                f"not {for_duration!r}",
                line=_line(for_node),
            )
    labels = _string_map(entries, "labels", name)
    reserved = sorted(_RESERVED_LABELS & set(labels))
    if reserved:
        raise RuleError(
            f"'labels' of alert {name!r} may not set {', '.join(reserved)} (the export sets it)",
            line=_line(entries["labels"][1]),
        )
    annotations = _string_map(entries, "annotations", name)
    return AlertRule(
        name, condition, condition_text, severity, _line(node), for_duration, labels, annotations
    )


def _string_map(entries: dict[str, tuple[yaml.Node, yaml.Node]], key: str, name: str) -> dict[str, str]:
    """Return the string -> string mapping under ``key`` (empty when absent)."""
    if key not in entries:
        return {}
    node = entries[key][1]
    _refuse_foreign_tag(node)
    if not isinstance(node, yaml.MappingNode):
        raise RuleError(f"'{key}' of alert {name!r} must be a mapping of names to strings", line=_line(node))
    found: dict[str, str] = {}
    for key_node, value_node in node.value:
        label = _string_value(key_node, f"a key in '{key}' of alert {name!r}")
        if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
            raise RuleError(
                f"{label!r} in '{key}' of alert {name!r} is not a valid name", line=_line(key_node)
            )
        if label in found:
            raise RuleError(f"duplicate key {label!r} in '{key}' of alert {name!r}", line=_line(key_node))
        found[label] = _string_value(value_node, f"{key}.{label} of alert {name!r}")
    return found


def parse_rules(text: str) -> list[AlertRule]:
    """Return the rules in a rules file's text, in file order; RuleError names the bad line."""
    if len(text) > MAX_RULES_BYTES:
        raise RuleError(f"the rules file holds {len(text)} characters; at most {MAX_RULES_BYTES} are allowed")
    root = _compose(text)
    shape = "a mapping with an 'alerts:' list"
    if root is None:
        raise RuleError(f"the rules file is empty; expected {shape}", line=1)
    _refuse_foreign_tag(root)
    if not isinstance(root, yaml.MappingNode):
        raise RuleError(f"the top level must be {shape}", line=_line(root))
    entries = _mapping_entries(root, (_TOP_LEVEL_KEY,), "at the top level")
    if _TOP_LEVEL_KEY not in entries:
        raise RuleError(f"the top level must be {shape}; 'alerts:' is missing", line=_line(root))
    alerts_node = entries[_TOP_LEVEL_KEY][1]
    _refuse_foreign_tag(alerts_node)
    if not isinstance(alerts_node, yaml.SequenceNode):
        raise RuleError("'alerts:' must hold a list of alert entries", line=_line(alerts_node))

    if len(alerts_node.value) > MAX_RULES:
        raise RuleError(
            f"'alerts:' holds {len(alerts_node.value)} entries; at most {MAX_RULES} are allowed",
            line=_line(alerts_node),
        )
    rules: list[AlertRule] = []
    taken_names: set[str] = set()
    for entry in alerts_node.value:
        rule = _rule_from_node(entry, taken_names)
        taken_names.add(rule.name)
        rules.append(rule)
    return rules


def load_rules(source: str | os.PathLike[str]) -> list[AlertRule]:
    """Return the rules in the YAML file at ``source``; RuleError if unreadable or malformed."""
    try:
        with open(source, "rb") as handle:
            raw = handle.read(MAX_RULES_BYTES + 1)
        if len(raw) > MAX_RULES_BYTES:
            raise RuleError(f"alert rules file {os.fspath(source)!r} is larger than {MAX_RULES_BYTES} bytes")
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(f"cannot read alert rules file {os.fspath(source)!r}: {exc}") from None
    return parse_rules(text)


def default_rules() -> list[AlertRule]:
    """Return the rules shipped with potato-ops in ``default_alerts.yaml``."""
    resource = resources.files("potato_ops").joinpath(DEFAULT_RULES_RESOURCE)
    return parse_rules(resource.read_text(encoding="utf-8"))


# --- evaluation --------------------------------------------------------------------------------


def _holds(condition: Condition, values: Mapping[str, float | None]) -> bool:
    if isinstance(condition, And):
        return all(_holds(operand, values) for operand in condition.operands)
    if isinstance(condition, Or):
        return any(_holds(operand, values) for operand in condition.operands)
    if isinstance(condition, Absent):
        return values[condition.metric] is None
    value = values[condition.metric]
    if value is None:
        return False
    threshold = condition.threshold
    match condition.op:
        case "<":
            return value < threshold
        case "<=":
            return value <= threshold
        case ">":
            return value > threshold
        case ">=":
            return value >= threshold
        case "==":
            return value == threshold
        case "!=":
            return value != threshold
    raise RuleError(f"unknown comparison operator {condition.op!r}")


def _metric_value(raw: float | int | None) -> float | None:
    if raw is None:
        return None
    value = float(raw)
    # NaN (e.g. a 0/0 rate) carries no data, like None; left alone it would make != fire.
    return None if math.isnan(value) else value


def evaluate(rules: Iterable[AlertRule], metrics: Mapping[str, float | int | None]) -> list[FiringAlert]:
    """Return the rules whose condition holds, most severe first, file order within a severity.

    A metric whose value is None (or NaN) has no data: every comparison on it is false.
    A metric a rule reads but ``metrics`` lacks is a RuleError carrying the rule's line.
    """
    firing: list[FiringAlert] = []
    for rule in rules:
        used = condition_metrics(rule.condition)
        absent = [metric for metric in used if metric not in metrics]
        if absent:
            raise RuleError(
                f"alert {rule.name!r} reads {', '.join(absent)}, missing from the metrics",
                line=rule.line,
            )
        values = {metric: _metric_value(metrics[metric]) for metric in used}
        if _holds(rule.condition, values):
            firing.append(FiringAlert(rule.name, rule.severity, rule.condition_text, values))
    return sorted(firing, key=lambda alert: SEVERITIES.index(alert.severity))


def highest_severity(alerts: Iterable[FiringAlert]) -> str | None:
    """Return the most severe severity among the alerts (P0 first), or None if there are none."""
    ranks = [SEVERITIES.index(alert.severity) for alert in alerts]
    return SEVERITIES[min(ranks)] if ranks else None
