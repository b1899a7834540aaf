"""The Grafana dashboard: built with grafana-foundation-sdk, loaded back by the SDK's dashboard
model, every query valid PromQL (promtool) over series potato-ops exposes.

grafana-foundation-sdk ships typed models rather than a JSON Schema file: the check is that
``Dashboard.from_json`` reads the JSON back into the same model.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.models.dashboard import Dashboard
from typer.testing import CliRunner

from potato_ops.cli import app
from potato_ops.monitoring.names import EXPOSED
from tests.prom_servers import binary

# Every family the exposition, the exporter and the operation series hold.
EXPOSED_FAMILIES = {e.name for e in EXPOSED.values()} | {
    "potato_ops_invariant_violations_by_kind",
    "potato_ops_operation_users",
    "potato_ops_operation_rebuilds_total",
    "potato_ops_operation_running",
    "potato_ops_operation_status",
    "potato_ops_operation_rate_users_per_second",
    "potato_ops_operation_eta_seconds",
    "potato_ops_operation_started_timestamp_seconds",
}


def dashboard() -> dict[str, Any]:
    result = CliRunner().invoke(app, ["alerts", "dashboard"])
    assert (result.exit_code, result.stderr) == (0, "")
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def panels(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in data["panels"] if p["type"] != "row"]


def test_the_sdk_reads_the_dashboard_back_into_the_same_model() -> None:
    data = dashboard()

    model = Dashboard.from_json(data)

    assert json.loads(json.dumps(model.to_json(), default=lambda o: o.to_json())) == data
    assert (data["uid"], data["title"]) == ("potato-ops", "potato-ops: bulk operations and invariant scan")
    assert [v["name"] for v in data["templating"]["list"]] == ["datasource", "job", "operation"]
    assert [p["title"] for p in data["panels"] if p["type"] == "row"] == [
        "Bulk operations",
        "Invariant scan",
        "Rebuild window",
    ]


def test_every_panel_queries_series_potato_ops_exposes() -> None:
    data = dashboard()

    for panel in panels(data):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        [target] = panel["targets"]
        names = set(re.findall(r"potato_ops_[a-z_]+", target["expr"]))
        assert names and names <= EXPOSED_FAMILIES, (panel["title"], names - EXPOSED_FAMILIES)
    # Panels never overlap: Grafana lays them out from their grid positions.
    cells = set()
    for panel in data["panels"]:
        pos = panel["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses each expression as a recording rule, the dashboard's variables filled in.
    exprs = [
        p["targets"][0]["expr"].replace("$job", ".*").replace("$operation", ".*") for p in panels(dashboard())
    ]
    rules = {
        "groups": [
            {"name": "dashboard", "rules": [{"record": f"panel:{i}", "expr": e} for i, e in enumerate(exprs)]}
        ]
    }
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump(rules))

    checked = subprocess.run(
        [binary("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in checked.stdout
