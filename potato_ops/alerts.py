"""Alert rules: load them from YAML, parse their conditions, and evaluate them against metrics.

A rules file is a mapping with one key, ``alerts``, holding a list of entries::

    alerts:
      - name: "Rebuild Failure Rate High"
        condition: "rebuild_success_rate < 0.99"
        severity: "P1"

A condition compares a known metric with a number (``METRIC OP NUMBER`` with OP one of
``< <= > >= == !=``); comparisons combine with ``and`` / ``or`` (``and`` binds tighter) and
parentheses. Conditions are parsed by a small recursive-descent parser into frozen dataclasses;
nothing in a rules file is ever executed, and YAML tags never construct objects.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import NoReturn

import yaml
from yaml.reader import ReaderError

from potato_ops.errors import RuleError

SEVERITIES: tuple[str, ...] = ("P0", "P1", "P2")

METRIC_HELP: dict[str, str] = {
    "rebuild_success_rate": "share 0..1 of rebuilds in the window that succeeded",
    "rebuild_failure_rate": "share 0..1 of rebuilds in the window that failed",
    "rebuild_count": "number of rebuilds in the window",
    "rebuild_avg_duration_ms": "mean duration of a rebuild in the window, in milliseconds",
    "rebuild_p50_duration_ms": "median duration of a rebuild in the window, in milliseconds",
    "rebuild_p95_duration_ms": "95th percentile rebuild duration in the window, in milliseconds",
    "rebuild_max_duration_ms": "longest rebuild in the window, in milliseconds",
    "users_processed": "number of users whose runs were rebuilt in the window",
    "rebuild_invariant_violations": "invariant violations found by rebuilds in the window",
    "invariant_violations": "invariant violations found by a fresh whole-database scan",
    "users_with_violations": "number of users with at least one invariant violation",
    "stale_active_flags": "runs still flagged active although they have ended",
    "timezone_changes_pending": "timezone changes whose runs have not been rebuilt yet",
    "slow_users": "users whose rebuild took longer than the slow-user threshold",
    "backups_count": "number of run backups kept",
    "backup_oldest_age_hours": "age of the oldest backup, in hours",
    "backup_newest_age_hours": "age of the newest backup, in hours",
    "operations_failed": "bulk operations that ended in failure",
    "operations_interrupted": "bulk operations that stopped before finishing",
}

METRIC_NAMES: tuple[str, ...] = tuple(METRIC_HELP)

COMPARISON_OPERATORS: tuple[str, ...] = ("<", "<=", ">", ">=", "==", "!=")

DEFAULT_RULES_RESOURCE = "default_alerts.yaml"

_RULE_KEYS: tuple[str, ...] = ("name", "condition", "severity")
_TOP_LEVEL_KEY = "alerts"
# Deep enough for any real rule, shallow enough to stay far from Python's recursion limit.
_MAX_NESTING = 32

_YAML_TAG_PREFIX = "tag:yaml.org,2002:"
_STR_TAG = _YAML_TAG_PREFIX + "str"
_MAP_TAG = _YAML_TAG_PREFIX + "map"
_SEQ_TAG = _YAML_TAG_PREFIX + "seq"
_NULL_TAG = _YAML_TAG_PREFIX + "null"


@dataclass(frozen=True)
class Comparison:
    """``metric op threshold``; false whenever the metric has no value."""

    metric: str
    op: str
    threshold: float


@dataclass(frozen=True)
class And:
    """True when every operand is true."""

    operands: tuple[Condition, ...]


@dataclass(frozen=True)
class Or:
    """True when at least one operand is true."""

    operands: tuple[Condition, ...]


Condition = Comparison | And | Or


@dataclass(frozen=True)
class AlertRule:
    """One entry of a rules file; ``line`` is the 1-based line where the entry starts."""

    name: str
    condition: Condition
    condition_text: str
    severity: str
    line: int

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


# --- condition parsing -------------------------------------------------------------------------

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATOR = re.compile(r"<=|>=|==|!=|<|>")
_NUMBER_TAIL = re.compile(r"[A-Za-z0-9_.]")
_KEYWORDS = frozenset({"and", "or"})


@dataclass(frozen=True)
class _Token:
    kind: str  # "name", "keyword", "number", "op", "(", ")", "end"
    text: str
    column: int  # 1-based

    def describe(self) -> str:
        return "end of condition" if self.kind == "end" else repr(self.text)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char.isspace():
            pos += 1
            continue
        column = pos + 1
        if char in "()":
            tokens.append(_Token(char, char, column))
            pos += 1
            continue
        number = _NUMBER.match(text, pos)
        if number:
            end = number.end()
            if end < len(text) and _NUMBER_TAIL.match(text, end):
                bad = re.match(r"[^\s()<>=!]+", text[pos:])
                shown = bad.group() if bad else number.group()
                raise RuleError(f"malformed number {shown!r} at column {column}")
            tokens.append(_Token("number", number.group(), column))
            pos = end
            continue
        name = _NAME.match(text, pos)
        if name:
            word = name.group()
            tokens.append(_Token("keyword" if word in _KEYWORDS else "name", word, column))
            pos = name.end()
            continue
        operator = _OPERATOR.match(text, pos)
        if operator:
            tokens.append(_Token("op", operator.group(), column))
            pos = operator.end()
            continue
        hint = " (did you mean '=='?)" if char == "=" else ""
        raise RuleError(f"unexpected character {char!r} at column {column}{hint}")
    tokens.append(_Token("end", "", len(text) + 1))
    return tokens


def _suggestion(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Parser:
    """Recursive descent over the tokens of one condition.

    Grammar::

        or_expr    := and_expr ("or" and_expr)*
        and_expr   := primary ("and" primary)*
        primary    := "(" or_expr ")" | comparison
        comparison := METRIC ("<" | "<=" | ">" | ">=" | "==" | "!=") NUMBER
    """

    def __init__(self, text: str) -> None:
        self._tokens = _tokenize(text)
        self._pos = 0
        self._depth = 0

    def parse(self) -> Condition:
        condition = self._or_expr()
        token = self._peek()
        if token.kind != "end":
            expected = "'and', 'or', ')' or end of condition"
            if token.kind == ")":
                expected = "'and', 'or' or end of condition (unbalanced ')')"
            self._fail(expected, token)
        return condition

    def _peek(self) -> _Token:
        return self._tokens[self._pos]

    def _advance(self) -> _Token:
        token = self._tokens[self._pos]
        self._pos += 1
        return token

    @staticmethod
    def _fail(expected: str, token: _Token) -> NoReturn:
        raise RuleError(f"expected {expected} at column {token.column}, found {token.describe()}")

    def _or_expr(self) -> Condition:
        operands = [self._and_expr()]
        while self._peek().kind == "keyword" and self._peek().text == "or":
            self._advance()
            operands.append(self._and_expr())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def _and_expr(self) -> Condition:
        operands = [self._primary()]
        while self._peek().kind == "keyword" and self._peek().text == "and":
            self._advance()
            operands.append(self._primary())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def _primary(self) -> Condition:
        token = self._peek()
        if token.kind == "(":
            self._depth += 1
            if self._depth > _MAX_NESTING:
                raise RuleError(
                    f"parentheses nested deeper than {_MAX_NESTING} at column {token.column}"
                )
            self._advance()
            inner = self._or_expr()
            closing = self._peek()
            if closing.kind != ")":
                self._fail(f"')' (closing the '(' at column {token.column})", closing)
            self._advance()
            self._depth -= 1
            return inner
        return self._comparison()

    def _comparison(self) -> Comparison:
        metric = self._advance()
        if metric.kind != "name":
            self._fail("a metric name or '('", metric)
        if metric.text not in METRIC_HELP:
            raise RuleError(
                f"unknown metric {metric.text!r} at column {metric.column}"
                + (_suggestion(metric.text, METRIC_NAMES) or f"; known: {', '.join(METRIC_NAMES)}")
            )
        operator = self._advance()
        if operator.kind != "op":
            self._fail(
                f"a comparison operator ({' '.join(COMPARISON_OPERATORS)}) after {metric.text!r}",
                operator,
            )
        number = self._advance()
        if number.kind != "number":
            self._fail(f"a number after {operator.text!r}", number)
        threshold = float(number.text)
        if not math.isfinite(threshold):
            raise RuleError(f"number {number.text!r} at column {number.column} is out of range")
        return Comparison(metric.text, operator.text, threshold)


def parse_condition(text: str) -> Condition:
    """Return the syntax tree of a condition; RuleError (without a line) when it is malformed."""
    try:
        return _Parser(text).parse()
    except RuleError as exc:
        raise RuleError(f"invalid condition {text!r}: {exc}") from None


def condition_metrics(condition: Condition) -> tuple[str, ...]:
    """Return the metric names a condition reads, each once, in order of appearance."""
    if isinstance(condition, Comparison):
        return (condition.metric,)
    seen: dict[str, None] = {}
    for operand in condition.operands:
        seen.update(dict.fromkeys(condition_metrics(operand)))
    return tuple(seen)


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
                f"unknown key {key!r} {where}; expected {', '.join(allowed)}"
                + _suggestion(key, allowed),
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


def _rule_from_node(node: yaml.Node, taken_names: set[str]) -> AlertRule:
    _refuse_foreign_tag(node)
    if not isinstance(node, yaml.MappingNode):
        raise RuleError(
            "each entry under 'alerts:' must be a mapping with name, condition and severity",
            line=_line(node),
        )
    entries = _mapping_entries(node, _RULE_KEYS, "in an alert entry")
    missing = [key for key in _RULE_KEYS if key not in entries]
    if missing:
        raise RuleError(
            f"alert entry is missing {', '.join(repr(key) for key in missing)}", line=_line(node)
        )

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
            f"unknown severity {severity!r} for alert {name!r}; "
            f"expected one of {', '.join(SEVERITIES)}",
            line=_line(severity_node),
        )

    condition_node = entries["condition"][1]
    condition_text = _string_value(condition_node, f"'condition' of alert {name!r}").strip()
    try:
        condition = parse_condition(condition_text)
    except RuleError as exc:
        raise RuleError(f"alert {name!r}: {exc}", line=_line(condition_node)) from None

    return AlertRule(name, condition, condition_text, severity, _line(node))


def parse_rules(text: str) -> list[AlertRule]:
    """Return the rules in a rules file's text, in file order; RuleError names the bad line."""
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
        with open(source, encoding="utf-8") as handle:
            text = handle.read()
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


def evaluate(
    rules: Iterable[AlertRule], metrics: Mapping[str, float | int | None]
) -> list[FiringAlert]:
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
