"""The summary record of a notebook run: a report an incident reviewer reads, without the code.

``render_summary`` builds one standalone HTML page from the executed notebook's outputs and the
run's result record: the title, who ran it, when and for which ticket, the verdict once at the
top, a table of every parameter, what changed, then each section of the notebook that showed
something (its tables as plain tables, its charts as images), and the run's details last.
Nothing is shown twice: the verdict cell and the result output are the header, reprs are
left out, and a heading whose cells showed nothing is left out with them.
"""

from __future__ import annotations

import ast
import datetime as dt
import html
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import mistune
from bs4 import BeautifulSoup, Tag

from potato_ops.errors import NotebookError
from potato_ops.notebook_runs.parameters import declared_in_source
from potato_ops.notebook_runs.result import RESULT_MIMETYPE, ProblemFound

# The class potato_ops.runbook.display puts on a verdict block: the page's header shows it instead.
VERDICT_CLASS = "potato-ops-verdict"
PARAMETER_TAGS = ("parameters", "injected-parameters")
PAPERMILL_ERROR_TAG = "papermill-error-cell-tag"
NONE_TEXT = "none"

_STATUS = {
    "ok": ("OK", "#1a7f37"),
    "problem": ("PROBLEM", "#cf222e"),
    "refused": ("REFUSED", "#bf8700"),
    "error": ("ERROR", "#cf222e"),
    "timeout": ("TIMEOUT", "#8250df"),
    "interrupted": ("INTERRUPTED", "#8250df"),
}
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_PROGRESS = re.compile(r"(.*?)\s*\d+%\|")  # a tqdm bar: its description, then "NN%|"
_SHAPE = re.compile(r"shape:\s*\((\d+),\s*(\d+)\)")
_ELLIPSIS = "…"
_STYLE = """
body{font-family:"DejaVu Sans","Liberation Sans",Arial,sans-serif;color:#1f2328;margin:2em auto;
max-width:1100px;padding:0 1em;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border-bottom:1px solid #d0d7de;padding:.25em .7em;text-align:left;vertical-align:top}
td{overflow-wrap:anywhere}td.name{overflow-wrap:normal;white-space:nowrap}
th{background:#f6f8fa}table.meta th{background:none;font-weight:normal;color:#57606a}
.verdict{font-size:1.2em;padding:.6em .9em;border-left:.4em solid;background:#f6f8fa}
.verdict strong{margin-right:.6em}
img{max-width:100%;height:auto;display:block;margin:.6em 0}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f6f8fa;padding:.5em;font-size:.85em}
.note{color:#57606a}.error{color:#cf222e}
"""


@dataclass
class _Section:
    title: str
    prose: list[str] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)


def render_summary(notebook: Any, result: Mapping[str, Any], name: str) -> str:
    """Return the summary page of one run as standalone HTML (UTF-8, no scripts, no code)."""
    cells = list(notebook.get("cells", []))
    title, intro = _title(cells, name)
    sections = _sections(cells)
    status = str(result.get("status", ""))
    word, colour = _STATUS.get(status, (status.upper() or "UNKNOWN", "#57606a"))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}: {_e(word)}</title><style>{_STYLE}</style></head><body>",
        f"<header><h1>{_e(title)}</h1>",
        intro,
        f'<p class="verdict" style="border-color:{colour}"><strong style="color:{colour}">{_e(word)}</strong>'
        f"{_e(str(result.get('verdict', '')) or 'no verdict recorded')}</p>",
        _who(result),
        "</header>",
        _section("Parameters", _parameter_table(cells, result)),
        _section("What changed", _changes(result)),
        *(_section(s.title, "".join(s.prose + s.shown)) for s in sections if s.shown),
        _section("Figures behind the verdict", _figures_table(result)),
        _section("Run details", _details(result)),
        "</body></html>",
        "",
    ]
    return "\n".join(p for p in parts if p)


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _section(title: str, body: str) -> str:
    # A heading without a body is what a reader should never meet: leave both out.
    return f"<section><h2>{_e(title)}</h2>{body}</section>" if body else ""


def _source(cell: Mapping[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _tags(cell: Mapping[str, Any]) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _markdown(text: str) -> str:
    return str(mistune.html(text)) if text.strip() else ""


def _title(cells: Sequence[Mapping[str, Any]], name: str) -> tuple[str, str]:
    """Return the notebook's first-level heading (else its name) and the paragraph after it."""
    for cell in cells:
        if cell.get("cell_type") != "markdown":
            continue
        lines = _source(cell).strip().splitlines()
        if lines and re.match(r"#\s", lines[0]):
            body = "\n".join(lines[1:]).strip()
            first = body.split("\n\n")[0] if body else ""
            return lines[0].lstrip("#").strip(), _markdown(first)
        break
    return name, ""


def _sections(cells: Sequence[Mapping[str, Any]]) -> list[_Section]:
    """Return the notebook's sections (one per heading below the title) with what each showed."""
    sections = [_Section("Output")]
    for cell in cells:
        tags = _tags(cell)
        if cell.get("cell_type") == "markdown" and PAPERMILL_ERROR_TAG not in tags:
            _read_markdown(_source(cell), sections)
        elif cell.get("cell_type") == "code" and not set(tags) & set(PARAMETER_TAGS):
            sections[-1].shown.extend(s for s in map(_output, cell.get("outputs", [])) if s)
    return sections


def _read_markdown(text: str, sections: list[_Section]) -> None:
    lines = text.strip().splitlines()
    if lines and re.match(r"#\s", lines[0]):
        return  # the title cell: the page's header already shows it
    prose: list[str] = []
    for line in lines:
        heading = re.match(r"(#{2,6})\s+(.*)", line)
        if heading:
            sections[-1].prose.append(_markdown("\n".join(prose)))
            sections.append(_Section(heading.group(2).strip()))
            prose = []
        else:
            prose.append(line)
    sections[-1].prose.append(_markdown("\n".join(prose)))


def _output(output: Mapping[str, Any]) -> str:
    """Return one output as summary HTML, or "" for what the summary leaves out."""
    kind = output.get("output_type")
    if kind == "stream":
        return _stream(output)
    if kind == "error":
        if output.get("ename") == ProblemFound.__name__:
            return ""  # the verdict that failed the run already heads the page
        return f'<p class="error"><strong>{_e(str(output.get("ename", "")))}</strong>: ' + (
            f"{_e(str(output.get('evalue', '')))}</p>"
        )
    data: Mapping[str, Any] = output.get("data", {})
    if RESULT_MIMETYPE in data:
        return ""  # the verdict and figures are the page's header and its figures table
    if "image/png" in data:
        meta = output.get("metadata", {}).get("image/png", {})
        alt = str(meta.get("alt") or data.get("text/plain") or "chart").strip("[]")
        png = "".join(data["image/png"]) if isinstance(data["image/png"], list) else data["image/png"]
        return f'<img alt="{_e(alt)}" src="data:image/png;base64,{png.strip()}">'
    if "text/html" in data:
        page = data["text/html"]
        page = "".join(page) if isinstance(page, list) else str(page)
        if VERDICT_CLASS in page:
            return ""
        if 'class="dataframe"' in page:
            return _plain_table(page)
        return page
    return ""  # text/plain alone is a repr: the parameter table and the blocks say it better


def _stream(output: Mapping[str, Any]) -> str:
    text = output.get("text", "")
    text = _ANSI.sub("", "".join(text) if isinstance(text, list) else str(text))
    # A progress bar redraws its line with carriage returns: keep each line's last state.
    lines = [line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n")]
    shown = "\n".join(_last_states([line for line in lines if line.strip()]))
    return f"<pre>{_e(shown)}</pre>" if shown else ""


def _last_states(lines: list[str]) -> list[str]:
    """Return the lines with each run of one progress bar's redraws cut to its last state."""
    kept: list[str] = []
    for line in lines:
        bar = _PROGRESS.match(line)
        previous = _PROGRESS.match(kept[-1]) if kept else None
        if bar and previous and bar.group(1).strip() == previous.group(1).strip():
            kept[-1] = line
        else:
            kept.append(line)
    return kept


def _plain_table(page: str) -> str:
    """Return a polars frame's HTML as a plain table: no shape line, no dtype row, no quotes."""
    soup = BeautifulSoup(page, "html.parser")
    table = soup.find("table")
    if not isinstance(table, Tag):
        return ""
    head = table.find("thead")
    head_rows = head.find_all("tr") if isinstance(head, Tag) else []
    # Column names read as words in a report: user_id -> user id.
    header = (
        [c.get_text().replace("_", " ") for c in head_rows[0].find_all(["th", "td"])] if head_rows else []
    )
    body = table.find("tbody")
    rows = [
        [_cell(c.get_text()) for c in tr.find_all("td")]
        for tr in (body.find_all("tr") if isinstance(body, Tag) else [])
    ]
    shape = _SHAPE.search(soup.get_text())
    total = int(shape.group(1)) if shape else len(rows)
    elided = [r for r in rows if r and all(c == _ELLIPSIS for c in r)]
    rows = [r for r in rows if r not in elided]
    if not total:
        return ""  # the step's own block above it already says there is nothing
    note = (
        f'<p class="note">Showing {len(rows)} of {total:,} rows.</p>' if elided or total > len(rows) else ""
    )
    return _table(header, rows) + note


def _cell(text: str) -> str:
    text = text.strip()
    if text == "null":
        return NONE_TEXT
    if re.fullmatch(r"-?\d+\.0", text):
        return text[:-2]  # a count stored as a float
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], *, unbroken: Sequence[int] = ()) -> str:
    """Return a plain table; the columns numbered in ``unbroken`` keep their words on one line."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    opening = ['<td class="name">' if i in unbroken else "<td>" for i in range(len(header))]
    body = "".join(
        "<tr>" + "".join(f"{opening[i]}{_e(c)}</td>" for i, c in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _plain(value: Any) -> str:
    """Return a JSON value in words: ``none``, ``yes``/``no``, ``a 1, b 2``, ``x, y``."""
    if value is None:
        return NONE_TEXT
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_plain(v)}" for k, v in value.items()) or NONE_TEXT
    if isinstance(value, list | tuple):
        return ", ".join(_plain(v) for v in value) or NONE_TEXT
    return str(value) if str(value) else "(empty)"


def _given(result: Mapping[str, Any], name: str) -> str:
    for where in ("parameters", "figures"):
        value = (result.get(where) or {}).get(name)
        if value not in (None, ""):
            return str(value)
    return "not given"


def _who(result: Mapping[str, Any]) -> str:
    database = result.get("database") or {}
    where = " ".join(str(database[k]) for k in ("url", "dialect", "server_version") if database.get(k))
    rows = [
        ("Operator", _given(result, "operator")),
        ("Ticket", _given(result, "ticket")),
        ("Started", _instant(result.get("started_at"))),
        ("Finished", _instant(result.get("finished_at"))),
        ("Database", where or "not recorded"),
    ]
    error = result.get("error")
    if isinstance(error, Mapping):
        where = f"cell {error['cell_index'] + 1}: " if isinstance(error.get("cell_index"), int) else ""
        rows.append(("Error", f"{where}{error.get('ename', 'error')}: {error.get('evalue', '')}"))
    elif error:
        rows.append(("Error", str(error)))
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="meta">{body}</table>'


def _instant(value: Any) -> str:
    """Return an ISO instant as ``YYYY-MM-DD HH:MM:SS UTC`` (as recorded when it does not parse)."""
    if not value:
        return "not recorded"
    try:
        instant = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if instant.tzinfo is None:
        return instant.strftime("%Y-%m-%d %H:%M:%S")
    return instant.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _parameter_table(cells: Sequence[Mapping[str, Any]], result: Mapping[str, Any]) -> str:
    """Return every declared parameter: its value in this run, whether set or default, its help."""
    cell = next((c for c in cells if "parameters" in _tags(c)), None)
    try:
        found = declared_in_source(_source(cell), "the notebook") if cell else []
    except NotebookError:
        found = []
    declared = {p.name: (p.type_name, p.default, p.help) for p in found}
    given: Mapping[str, Any] = result.get("parameters") or {}
    rows = []
    for name in [*declared, *(n for n in given if n not in declared)]:
        _, default_src, help_text = declared.get(name, ("", "", ""))
        if name in given:
            value, origin = _plain(given[name]), "this run"
        else:
            value, origin = _plain(_literal(default_src)), "default"
        rows.append((name, value, origin, help_text))
    return _table(("parameter", "value", "set by", "meaning"), rows, unbroken=(0, 2)) if rows else ""


def _literal(source: str) -> Any:
    try:
        return ast.literal_eval(source)
    except (ValueError, SyntaxError):
        return source


def _changes(result: Mapping[str, Any]) -> str:
    """Return what the run changed, as far as its record says: dry run, operations, before/after."""
    figures: Mapping[str, Any] = result.get("figures") or {}
    parts: list[str] = []
    dry = (result.get("parameters") or {}).get("dry_run", figures.get("dry_run"))
    if dry is True:
        parts.append("<p>Dry run: nothing was written.</p>")
    operations = [str(op) for op in result.get("operation_ids") or []]
    if operations:
        parts.append("<p>Operations: " + ", ".join(f"<code>{_e(op)}</code>" for op in operations) + "</p>")
    pairs = [
        (key[: -len("_before")].replace("_", " "), figures[key], figures[key[: -len("_before")] + "_after"])
        for key in figures
        if key.endswith("_before") and key[: -len("_before")] + "_after" in figures
    ]
    if pairs:
        parts.append(_table(("", "before", "after"), [(k, _plain(b), _plain(a)) for k, b, a in pairs]))
    if isinstance(figures.get("outcomes"), Mapping) and figures["outcomes"]:
        parts.append(f"<p>Outcomes: {_e(_plain(figures['outcomes']))}.</p>")
    if not parts:
        parts.append(
            '<p class="note">The record names no change: no operation and no before/after figures.</p>'
        )
    return "".join(parts)


def _figures_table(result: Mapping[str, Any]) -> str:
    figures: Mapping[str, Any] = result.get("figures") or {}
    rows = [(k.replace("_", " "), _plain(v)) for k, v in figures.items() if k not in ("operator", "ticket")]
    return _table(("figure", "value"), rows) if rows else ""


def _details(result: Mapping[str, Any]) -> str:
    keys = (
        ("run_id", "Run id"),
        ("notebook", "Notebook"),
        ("source_sha256", "Notebook SHA-256"),
        ("exit_code", "Exit code"),
        ("duration_s", "Duration (s)"),
        ("kernel_name", "Kernel"),
        ("potato_ops_version", "potato-ops"),
        ("python_version", "Python"),
        ("papermill_version", "papermill"),
        ("hostname", "Host"),
    )
    rows = [(label, _plain(result[key])) for key, label in keys if result.get(key) not in (None, "")]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="meta">{body}</table>' if rows else ""
