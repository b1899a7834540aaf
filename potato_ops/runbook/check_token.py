"""The identity of one check of a notebook's parameters, and the rule that keeps a kernel honest.

A notebook's check cell (each ``check_*`` function of ``runbook.params``) mints a
``CheckToken``; every result computed after it carries that token. Starting a new check (even
one that then fails) and any step that fails make the token stale, so a later cell that reaches
for state computed under an older token is refused with one line (``StaleStateError``) before
it runs: a reattached kernel never acts on, nor shows, the user of an earlier run. A writing
step runs at most once per token: running its cell again shows the first result and writes
nothing.

Outside IPython the rule is held by the decorators (``checks_parameters`` on the checks,
``runbook_step`` on the steps that open the database or write). In an IPython kernel it is
also held cell by cell: an input transformer refuses a cell that names a stale result, and each
result a cell leaves behind is stamped with the token it was computed under.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import functools
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from potato_ops.errors import NotebookError
from potato_ops.notebook_runs import interactive
from potato_ops.notebook_runs.confirm import CONFIRM
from potato_ops.notebook_runs.result import ProblemFound

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class CheckToken:
    """One successful check of a notebook's parameters."""

    serial: int
    check: str  # the check function that minted it
    minted_at: dt.datetime

    def __str__(self) -> str:
        return f"check #{self.serial} ({self.minted_at.astimezone(dt.UTC):%H:%M:%S} UTC)"


class StaleStateError(NotebookError):
    """A cell or step used results of an earlier check of the parameters; nothing was run."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback: the message says what to do.
        return [f"{type(self).__name__}: {self}"]


class _Tokens:
    """The kernel's one register of checks (a notebook runs in one process)."""

    def __init__(self) -> None:
        self.serial = 0
        self.current: CheckToken | None = None
        self.why_stale = "no check of the parameters has run"
        self.stamps: dict[int, CheckToken] = {}
        self.writes: dict[tuple[int, str], Any] = {}


_tokens = _Tokens()


def current_token() -> CheckToken | None:
    """Return the token of the last check when it is still valid, else None."""
    return _tokens.current


def invalidate(reason: str) -> None:
    """Make the current token stale: results computed under it are refused from now on."""
    if _tokens.current is not None:
        _tokens.current = None
        _tokens.why_stale = reason


def mint(check: str) -> CheckToken:
    """Return a fresh token, now the current one (results of earlier checks become stale)."""
    _tokens.serial += 1
    token = CheckToken(_tokens.serial, check, dt.datetime.now(dt.UTC))
    _tokens.current = token
    _tokens.why_stale = "the parameters were checked again since"
    _tokens.writes = {k: v for k, v in _tokens.writes.items() if k[0] == token.serial}
    return token


def stamp(value: object, token: CheckToken) -> None:
    """Mark value (and the records it holds) as computed under token; plain values are skipped."""
    for item in (value, *_parts(value)):
        if id(item) in _tokens.stamps or not _stampable(item):
            continue
        try:
            weakref.finalize(item, _tokens.stamps.pop, id(item), None)
        except TypeError:  # not weakly referenceable: it cannot be stamped
            continue
        _tokens.stamps[id(item)] = token


def token_of(value: object) -> CheckToken | None:
    """Return the token value was computed under, or None when it carries none."""
    return _tokens.stamps.get(id(value))


def is_stale(value: object) -> bool:
    """Return True when value was computed under a token that is no longer the current one."""
    found = token_of(value)
    return found is not None and found != _tokens.current


def _stampable(value: object) -> bool:
    kind = type(value)
    return not isinstance(value, type) and kind.__module__.startswith("potato_ops.")


def _parts(value: object) -> Iterable[object]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [getattr(value, f.name) for f in dataclasses.fields(value)]
    return []


def refuse_stale(values: Iterable[object], where: str) -> None:
    """Raise StaleStateError when any value was computed under a stale token."""
    for value in values:
        found = token_of(value)
        if found is not None and found != _tokens.current:
            raise StaleStateError(stale_message(where, found))


def stale_message(where: str, found: CheckToken) -> str:
    """Return the one line that says why a cell was refused and what to do (names no user)."""
    return (
        f"{where} uses results of an earlier {found}, which no longer holds: {_tokens.why_stale}. "
        "Nothing was run. Run the notebook from the top (Run All) once the parameters check passes."
    )


def checks_parameters(
    check: Callable[P, R], confirmed: Callable[[R, object], None] | None = None
) -> Callable[P, R]:
    """Decorate a notebook's check: it makes earlier results stale, then mints a token for its own.

    ``confirmed(checked, confirm)`` raises when a live run's ``confirm`` argument is wrong.
    """

    @functools.wraps(check)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        invalidate("the last check of the parameters failed")
        _watch_ipython()
        result = check(*args, **kwargs)
        if confirmed is not None and CONFIRM in kwargs:
            confirmed(result, kwargs[CONFIRM])
        token = mint(check.__name__)
        stamp(result, token)
        interactive.begin(check.__name__, _parameters_of(result))
        return result

    return checked


def runbook_step(*, writes: bool = False) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a step: it refuses stale arguments, a failure makes the token stale, and a
    writing step runs once per token (called again, it shows its first result, writing nothing)."""

    def decorate(step: Callable[P, R]) -> Callable[P, R]:
        name = step.__name__

        @functools.wraps(step)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            arguments = (*args, *kwargs.values())
            refuse_stale(arguments, name)
            # Only results of the current check's own state are kept (a call with plain
            # arguments, from Python, is never taken for a repeat).
            token = _tokens.current
            if token is not None and not any(token_of(a) == token for a in arguments):
                token = None
            if writes and token is not None and (token.serial, name) in _tokens.writes:
                done: R = _tokens.writes[token.serial, name]
                _show_note(
                    f"{name} already ran after {token}: its result is shown again and nothing was "
                    "written. To run it again, run the parameters check again (or Run All)."
                )
                return done
            try:
                result = step(*args, **kwargs)
            except BaseException:
                invalidate(f"{name} failed")
                raise
            if token is not None:
                stamp(result, token)
                if writes:
                    _tokens.writes[token.serial, name] = result
                    if _wrote(result):
                        interactive.note_write(name, _operation_ids(result))
            return result

        return guarded

    return decorate


def _parameters_of(checked: object) -> dict[str, Any]:
    """Return the checked parameters as one flat mapping (the common ones spelled out)."""
    if not dataclasses.is_dataclass(checked) or isinstance(checked, type):
        return {}
    found: dict[str, Any] = {}
    for item in dataclasses.fields(checked):
        value = getattr(checked, item.name)
        if item.name == "common" and dataclasses.is_dataclass(value) and not isinstance(value, type):
            found.update(dataclasses.asdict(value))
        elif item.name == "user" and value is not None:
            found.update(user_email=getattr(value, "email", ""), user_id=getattr(value, "user_id", ""))
        else:
            found[item.name] = value
    return found


def _wrote(result: object) -> bool:
    """Return True unless a step's result says it was skipped or a dry run."""
    if getattr(result, "skipped", "") or getattr(result, "refused", ""):
        return False
    for holder in (result, getattr(result, "result", None)):
        dry = getattr(holder, "dry_run", None)
        if isinstance(dry, bool):
            return not dry
    return getattr(result, "done", True) is not False


def _operation_ids(result: object) -> list[str]:
    """Return the operation ids a step's result names (a rebuild's, a bulk run's, repairs')."""
    found: list[str] = []
    for holder in (result, getattr(result, "result", None)):
        one = getattr(holder, "operation_id", None)
        if isinstance(one, str) and one:
            found.append(one)
        many = getattr(holder, "operation_ids", None)
        if isinstance(many, list | tuple):
            found.extend(str(op) for op in many if op)
    return list(dict.fromkeys(found))


def _show_note(text: str) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover - IPython comes with ipykernel
        return
    if get_ipython() is not None:
        display({"text/plain": f"• {text}"}, raw=True)  # type: ignore[no-untyped-call]


# -- the kernel: each cell is checked before it runs, and what it leaves is stamped ------------


def _watch_ipython() -> None:
    """Install the cell guard in this IPython kernel, once; nothing outside IPython."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return
    shell = get_ipython()
    if shell is None or getattr(shell, "_potato_ops_cell_guard", False):
        return
    shell._potato_ops_cell_guard = True
    shell.ast_transformers.append(_CellGuard(shell))
    shell.events.register("post_run_cell", functools.partial(_after_cell, shell))


def _after_cell(shell: Any, result: Any) -> None:
    error = getattr(result, "error_in_exec", None)
    if error is not None and not isinstance(error, ProblemFound | StaleStateError):
        invalidate("a cell after the check failed")
    token = _tokens.current
    if token is None:
        return
    for name, value in list(shell.user_ns.items()):
        if not name.startswith("_") and token_of(value) is None:
            stamp(value, token)


def _stale_rejection(message: str) -> Exception:
    from IPython.core.error import InputRejected

    # Raised before a cell runs, IPython shows the one line and runs nothing; the same name.
    refused = type("StaleStateError", (StaleStateError, InputRejected), {"__module__": __name__})
    return refused(message)  # type: ignore[no-any-return]


class _CellGuard(ast.NodeTransformer):
    """Refuses a cell that reads a name holding a stale result (names it assigns aside)."""

    def __init__(self, shell: Any) -> None:
        super().__init__()
        self.shell = shell

    def visit_Module(self, node: ast.Module) -> ast.Module:
        loaded: list[str] = []
        stored: set[str] = set()
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                if isinstance(sub.ctx, ast.Store):
                    stored.add(sub.id)
                else:
                    loaded.append(sub.id)
        namespace = self.shell.user_ns
        for name in dict.fromkeys(loaded):
            if name in stored or name not in namespace:
                continue
            found = token_of(namespace[name])
            if found is not None and found != _tokens.current:
                raise _stale_rejection(stale_message(f"this cell ({name})", found))
        return node
