"""Alert conditions: tokenize and parse a condition into a small syntax tree.

A condition compares a metric with a number (``METRIC OP NUMBER`` with OP one of
``< <= > >= == !=``) or asks whether it has no value at all (``absent(METRIC)``: never
computed, never scraped); these combine with ``and`` / ``or`` (``and`` binds tighter) and
parentheses. Conditions are parsed by a small recursive-descent parser into frozen dataclasses;
nothing in a condition is ever executed. Which metric names exist is the caller's to say
(``potato_ops.monitoring.alerts`` passes its ``METRIC_NAMES``).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from potato_ops.errors import RuleError

COMPARISON_OPERATORS: tuple[str, ...] = ("<", "<=", ">", ">=", "==", "!=")

# Deep enough for any real rule, shallow enough to stay far from Python's recursion limit.
_MAX_NESTING = 32


@dataclass(frozen=True)
class Comparison:
    """``metric op threshold``; false whenever the metric has no value."""

    metric: str
    op: str
    threshold: float


@dataclass(frozen=True)
class Absent:
    """``absent(metric)``: true exactly when the metric has no value."""

    metric: str


@dataclass(frozen=True)
class And:
    """True when every operand is true."""

    operands: tuple[Condition, ...]


@dataclass(frozen=True)
class Or:
    """True when at least one operand is true."""

    operands: tuple[Condition, ...]


Condition = Comparison | Absent | And | Or


_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATOR = re.compile(r"<=|>=|==|!=|<|>")
_NUMBER_TAIL = re.compile(r"[A-Za-z0-9_.]")
_KEYWORDS = frozenset({"and", "or", "absent"})


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


def suggestion(word: str, choices: Iterable[str]) -> str:
    """Return "; did you mean 'x'?" for the choice closest to ``word``, or "" if none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Parser:
    """Recursive descent over the tokens of one condition.

    Grammar::

        or_expr    := and_expr ("or" and_expr)*
        and_expr   := primary ("and" primary)*
        primary    := "(" or_expr ")" | "absent" "(" METRIC ")" | comparison
        comparison := METRIC ("<" | "<=" | ">" | ">=" | "==" | "!=") NUMBER
    """

    def __init__(self, text: str, metrics: Sequence[str]) -> None:
        self._tokens = _tokenize(text)
        self._metrics = metrics
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
                raise RuleError(f"parentheses nested deeper than {_MAX_NESTING} at column {token.column}")
            self._advance()
            inner = self._or_expr()
            closing = self._peek()
            if closing.kind != ")":
                self._fail(f"')' (closing the '(' at column {token.column})", closing)
            self._advance()
            self._depth -= 1
            return inner
        if token.kind == "keyword" and token.text == "absent":
            return self._absent()
        return self._comparison()

    def _metric(self) -> _Token:
        metric = self._advance()
        if metric.kind != "name":
            self._fail("a metric name or '('", metric)
        if metric.text not in self._metrics:
            raise RuleError(
                f"unknown metric {metric.text!r} at column {metric.column}"
                + (suggestion(metric.text, self._metrics) or f"; known: {', '.join(self._metrics)}")
            )
        return metric

    def _absent(self) -> Absent:
        self._advance()  # absent
        opening = self._advance()
        if opening.kind != "(":
            self._fail("'(' after 'absent'", opening)
        metric = self._metric()
        closing = self._advance()
        if closing.kind != ")":
            self._fail(f"')' (closing the '(' at column {opening.column})", closing)
        return Absent(metric.text)

    def _comparison(self) -> Comparison:
        metric = self._metric()
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


def parse_condition(text: str, metrics: Sequence[str]) -> Condition:
    """Return the syntax tree of a condition over ``metrics``; RuleError (no line) if malformed."""
    try:
        return _Parser(text, metrics).parse()
    except RuleError as exc:
        raise RuleError(f"invalid condition {text!r}: {exc}") from None


def condition_metrics(condition: Condition) -> tuple[str, ...]:
    """Return the metric names a condition reads, each once, in order of appearance."""
    if isinstance(condition, Comparison | Absent):
        return (condition.metric,)
    seen: dict[str, None] = {}
    for operand in condition.operands:
        seen.update(dict.fromkeys(condition_metrics(operand)))
    return tuple(seen)
