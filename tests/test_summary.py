"""The summary record is a report: built from a literal executed notebook and result record."""

from __future__ import annotations

import base64
from typing import Any

import nbformat
import polars as pl
from bs4 import BeautifulSoup

from potato_ops.notebook_runs.result import RESULT_MIMETYPE
from potato_ops.notebook_runs.summary import render_summary
from potato_ops.runbook.display import Verdict

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode("ascii")
FRAME = pl.DataFrame({"kind": ["overlap", "orphan"], "user_id": ["u1", None], "count": [2.0, 1.0]})
VERDICT = "repaired 2 users; 0 violations remain"


def cell(
    kind: str, source: str, outputs: list[dict[str, Any]] | None = None, tags: list[str] | None = None
) -> Any:
    made = (nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell)(source)  # type: ignore[no-untyped-call]
    if tags:
        made.metadata["tags"] = tags
    if kind == "code":
        made.outputs = [nbformat.from_dict(o) for o in outputs or []]  # type: ignore[no-untyped-call]
    return made


def result_of(data: dict[str, Any], metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"output_type": "display_data", "data": data, "metadata": metadata or {}}


NOTEBOOK = nbformat.v4.new_notebook(  # type: ignore[no-untyped-call]
    cells=[
        cell(
            "markdown",
            "# 05 Error recovery\n\nPlaybook: **Error Recovery**. Detect, repair.\n\nRun it with `x`.",
        ),
        cell("markdown", "## Parameters"),
        cell(
            "code",
            'scenario: str = "all"  # which scenario to run\ndry_run: bool = True  # roll back at the end\n'
            'ticket: str = ""  # the ticket',
            tags=["parameters"],
        ),
        cell("code", 'dry_run = False\nticket = "INC-9"', tags=["injected-parameters"]),
        cell("markdown", "## Check the parameters"),
        cell("code", "params", [result_of({"text/plain": "RecoveryParams(common=Common(operator='ana'))"})]),
        cell("markdown", "## Detect"),
        cell("code", "frame", [result_of({"text/html": FRAME._repr_html_(), "text/plain": repr(FRAME)})]),
        cell(
            "code",
            "chart",
            [
                result_of(
                    {"image/png": PNG, "text/plain": "[chart: violations]"},
                    {"image/png": {"alt": "chart: violations"}},
                )
            ],
        ),
        cell(
            "code",
            "print",
            [
                {
                    "output_type": "stream",
                    "name": "stderr",
                    "text": "rows:  10%|#\r rows: 50%|#####\nrows: 100%|##########\n",
                }
            ],
        ),
        cell("markdown", "## Nothing shown here"),
        cell("code", "x = 1"),
        cell("markdown", "## Verdict"),
        cell(
            "code",
            "verdict",
            [result_of({"text/html": Verdict(VERDICT, "ok")._repr_html_(), "text/plain": "v"})],
        ),
        cell(
            "code",
            "record_result(...)",
            [result_of({RESULT_MIMETYPE: {"verdict": VERDICT}, "text/plain": "\u2705 " + VERDICT})],
        ),
    ]
)
RESULT: dict[str, Any] = {
    "run_id": "20261130T101500Z_05_error_recovery_0123abcd",
    "status": "ok",
    "verdict": VERDICT,
    "parameters": {"dry_run": False, "ticket": "INC-9", "operator": "ana"},
    "figures": {
        "violations_before": 3,
        "violations_after": 0,
        "outcomes": {"repaired": 2},
        "ticket": "INC-9",
    },
    "operation_ids": ["op-1"],
    "database": {"url": "postgresql://ops:***@db/potato", "dialect": "postgresql"},
    "started_at": "2026-11-30T10:15:00.123456+00:00",
    "finished_at": "2026-11-30T10:15:09+00:00",
}


def page() -> BeautifulSoup:
    return BeautifulSoup(render_summary(NOTEBOOK, RESULT, "05_error_recovery"), "html.parser")


def sections(soup: BeautifulSoup) -> dict[str, Any]:
    return {s.find("h2").get_text(): s for s in soup.find_all("section")}  # type: ignore[union-attr]


def rows(table: Any) -> list[list[str]]:
    return [[td.get_text() for td in tr.find_all(["td", "th"])] for tr in table.find_all("tr")]


def test_the_header_says_what_who_when_and_the_verdict_once() -> None:
    soup = page()
    assert soup.h1.get_text() == "05 Error recovery"  # type: ignore[union-attr]
    header = soup.header
    assert header is not None
    assert "Playbook: Error Recovery. Detect, repair." in header.get_text()
    assert "Run it with" not in soup.get_text()
    assert soup.get_text().count(VERDICT) == 1
    assert header.find(class_="verdict").get_text() == "OK" + VERDICT  # type: ignore[union-attr]
    assert rows(header.table) == [
        ["Operator", "ana"],
        ["Ticket", "INC-9"],
        ["Started", "2026-11-30 10:15:00 UTC"],
        ["Finished", "2026-11-30 10:15:09 UTC"],
        ["Database", "postgresql://ops:***@db/potato postgresql"],
    ]
    assert "\u2705" not in soup.get_text()


def test_every_parameter_is_listed_with_its_value_and_who_set_it() -> None:
    table = sections(page())["Parameters"].table
    assert rows(table) == [
        ["parameter", "value", "set by", "meaning"],
        ["scenario", "all", "default", "which scenario to run"],
        ["dry_run", "no", "this run", "roll back at the end"],
        ["ticket", "INC-9", "this run", "the ticket"],
        ["operator", "ana", "this run", ""],
    ]


def test_what_changed_comes_from_the_record() -> None:
    changed = sections(page())["What changed"]
    assert "op-1" in changed.get_text() and "Outcomes: repaired 2." in changed.get_text()
    assert rows(changed.table) == [["", "before", "after"], ["violations", "3", "0"]]


def test_sections_hold_plain_tables_charts_and_no_repr_and_no_empty_heading() -> None:
    found = sections(page())
    assert list(found) == [
        "Parameters",
        "What changed",
        "Detect",
        "Figures behind the verdict",
        "Run details",
    ]
    detect = found["Detect"]
    assert rows(detect.table) == [
        ["kind", "user id", "count"],
        ["overlap", "u1", "2"],
        ["orphan", "none", "1"],
    ]
    assert "shape:" not in detect.get_text()
    image = detect.img
    assert image["alt"] == "chart: violations" and image["src"] == f"data:image/png;base64,{PNG}"
    assert detect.pre.get_text() == "rows: 100%|##########"  # a progress bar's last state only
    assert "RecoveryParams(" not in str(page())


def test_a_run_with_no_change_recorded_says_so() -> None:
    error = {"cell_index": 4, "ename": "CellTimeoutError", "evalue": "the cell did not finish within 6 s"}
    bare = {"status": "timeout", "verdict": "cell 5 did not finish within 6 s", "error": error}
    soup = BeautifulSoup(render_summary(NOTEBOOK, bare, "05_error_recovery"), "html.parser")
    assert "The record names no change" in sections(soup)["What changed"].get_text()
    assert "Operator not given" in " ".join(soup.header.get_text(" ").split())  # type: ignore[union-attr]
    assert soup.find(class_="verdict").strong.get_text() == "TIMEOUT"  # type: ignore[union-attr]
    assert "Error cell 5: CellTimeoutError: the cell did not finish within 6 s" in " ".join(
        soup.header.get_text(" ").split()  # type: ignore[union-attr]
    )
