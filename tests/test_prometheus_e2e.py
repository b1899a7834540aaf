"""End to end with Debian's servers: node_exporter reads the textfile, Prometheus evaluates the
exported rules, Alertmanager routes by the generated configuration.

Each server is started on a free loopback port with its data in the test's folder, scraping and
evaluating every second, and stopped whatever happens. A database with two users whose runs are
missing (two violations, by hand) makes the P0 scan alert reach Alertmanager with the P0
receiver; a quick ``metrics --no-scan`` run keeps it firing; an audit that stops running fires
the (shortened) staleness rule, held back by the P0's inhibit rule; the repair resolves the P0
and frees the P1. Waits poll the servers' APIs for events; nothing is timed.
"""

from __future__ import annotations

import re
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from potato_ops import Storage
from potato_ops.cli import app
from potato_ops.exitcodes import ExitCode
from potato_ops.monitoring.alertmanager import P0_RECEIVER, P1_RECEIVER
from tests.conftest import add_user
from tests.prom_servers import Server, binary, free_port, get_json, running, wait_for

JOB = "potato-ops-textfile"
SCAN_ALERT = "PotatoOpsInvariantViolationsFoundByScan"
AUDIT_STALE = "PotatoOpsAuditStale"
AUDIT_STALE_SECONDS = 3  # instead of 7200, so the test sees it fire


def cli(db_url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env={"POTATO_DATABASE_URL": db_url})
    return result.exit_code, result.stdout, result.stderr


def short_rules(tmp_path: Path) -> Path:
    """The shipped rules with the audit's staleness threshold shortened."""
    shipped = (Path(__file__).resolve().parents[1] / "potato_ops" / "default_alerts.yaml").read_text()
    shortened = shipped.replace(
        "last_audit_age_seconds > 7200", f"last_audit_age_seconds > {AUDIT_STALE_SECONDS}"
    )
    assert shortened != shipped
    path = tmp_path / "rules_source.yaml"
    path.write_text(shortened)
    return path


@pytest.fixture
def stack(db_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """node_exporter, Alertmanager and Prometheus, wired together; yields where things are."""
    prometheus, alertmanager = binary("prometheus"), binary("prometheus-alertmanager")
    node_exporter = binary("prometheus-node-exporter")
    textfiles = tmp_path / "textfile_collector"
    textfiles.mkdir()
    rules = tmp_path / "potato-ops.rules.yml"
    code, _, err = cli(
        db_url, "alerts", "export", "--rules", str(short_rules(tmp_path)), "--job", JOB, "-o", str(rules)
    )
    assert (code, err) == (0, "")
    am_config = tmp_path / "alertmanager.yml"
    assert cli(db_url, "alerts", "alertmanager", "-o", str(am_config))[0] == 0
    ports = {name: free_port() for name in ("node", "am", "prom")}
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules)],
                "alerting": {
                    "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{ports['am']}"]}]}]
                },
                "scrape_configs": [
                    {"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{ports['node']}"]}]}
                ],
            }
        )
    )
    with (
        running(
            "node_exporter",
            [
                node_exporter,
                f"--web.listen-address=127.0.0.1:{ports['node']}",
                "--collector.disable-defaults",
                "--collector.textfile",
                f"--collector.textfile.directory={textfiles}",
            ],
            ports["node"],
            tmp_path,
        ) as node,
        running(
            "alertmanager",
            [
                alertmanager,
                f"--config.file={am_config}",
                f"--storage.path={tmp_path / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{ports['am']}",
                "--cluster.listen-address=",
            ],
            ports["am"],
            tmp_path,
        ) as am,
        running(
            "prometheus",
            [
                prometheus,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{ports['prom']}",
            ],
            ports["prom"],
            tmp_path,
        ) as prom,
    ):
        yield {"textfile": textfiles / "potato_ops.prom", "prom": prom, "am": am, "servers": [node, am, prom]}


def instant(text: str) -> float:
    """Return the Unix time of an RFC 3339 instant as the servers write it (nanoseconds, Z)."""
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00")).timestamp()


def firing_in_prometheus(prom: Server) -> dict[str, dict[str, Any]]:
    alerts = get_json(prom.url + "/api/v1/alerts")["data"]["alerts"]
    return {a["labels"]["alertname"]: a for a in alerts if a["state"] == "firing"}


def in_alertmanager(am: Server) -> dict[str, dict[str, Any]]:
    alerts = get_json(am.url + "/api/v2/alerts")
    now = time.time()
    return {a["labels"]["alertname"]: a for a in alerts if instant(a["endsAt"]) > now}


def evaluated_after_scrape_of(prom: Server, written_at: float) -> bool | None:
    """True once Prometheus scraped the textfile written at ``written_at`` and then evaluated the rules."""
    query = urllib.parse.quote(f'timestamp(potato_ops_window_no_data{{job="{JOB}"}})')
    result = get_json(f"{prom.url}/api/v1/query?query={query}")["data"]["result"]
    if not result or float(result[0]["value"][1]) <= written_at:
        return None
    scraped = float(result[0]["value"][1])
    groups = get_json(prom.url + "/api/v1/rules")["data"]["groups"]
    evaluated = min(instant(g["lastEvaluation"]) for g in groups)
    return True if evaluated > scraped else None


def test_p0_reaches_alertmanager_survives_a_quick_run_and_resolves_after_the_repair(
    storage: Storage, db_url: str, stack: dict[str, Any]
) -> None:
    prom, am, servers = stack["prom"], stack["am"], stack["servers"]
    textfile = str(stack["textfile"])
    add_user(storage, "u1", ["2024-03-01", "2024-03-02"])  # marks, no runs: uncovered days
    add_user(storage, "u2", ["2024-03-05"])

    code, out, _ = cli(db_url, "audit", "--no-notebook", "--textfile", textfile)
    assert code == ExitCode.ALERT_P0, out

    # The P0 reaches Alertmanager with its labels, annotations and the P0 receiver.
    alert = wait_for("the P0 in Alertmanager", lambda: in_alertmanager(am).get(SCAN_ALERT), servers)
    assert alert["labels"]["severity"] == "P0"
    assert alert["labels"]["job"] == JOB
    assert alert["annotations"]["runbook_url"] == "notebooks/05_error_recovery.ipynb"
    assert alert["annotations"]["description"].startswith(
        "Invariant violations found by the last whole-database scan: 2 "
    )
    assert [r["name"] for r in alert["receivers"]] == [P0_RECEIVER]

    # A quick run without the scan: Prometheus scrapes it, evaluates, and the P0 stays.
    written_at = time.time()
    code, _, err = cli(db_url, "metrics", "--no-scan", "--textfile", textfile)
    assert (code, err) == (0, "")
    wait_for(
        "a scrape and an evaluation of the quick run's file",
        lambda: evaluated_after_scrape_of(prom, written_at),
        servers,
    )
    assert SCAN_ALERT in firing_in_prometheus(prom)
    assert SCAN_ALERT in in_alertmanager(am)

    # No audit since: the staleness rule fires; the P0 of the same job inhibits it.
    stale = wait_for("the audit's staleness alert", lambda: in_alertmanager(am).get(AUDIT_STALE), servers)
    assert stale["labels"]["severity"] == "P1"
    assert [r["name"] for r in stale["receivers"]] == [P1_RECEIVER]
    assert stale["status"]["state"] == "suppressed" and stale["status"]["inhibitedBy"]

    # The repair, then a run with the scan: the P0 resolves and the P1 is no longer held back.
    for user in ("u1", "u2"):
        assert cli(db_url, "rebuild", "--user-id", user)[0] == 0
    code, _, err = cli(db_url, "metrics", "--textfile", textfile)
    assert (code, err) == (0, "")
    wait_for(
        "the P0 to resolve in Prometheus",
        lambda: True if SCAN_ALERT not in firing_in_prometheus(prom) else None,
        servers,
    )
    wait_for(
        "the P0 to resolve in Alertmanager",
        lambda: True if SCAN_ALERT not in in_alertmanager(am) else None,
        servers,
    )
    freed = wait_for(
        "the P1 to be active",
        lambda: (
            a if (a := in_alertmanager(am).get(AUDIT_STALE)) and a["status"]["state"] == "active" else None
        ),
        servers,
    )
    assert [r["name"] for r in freed["receivers"]] == [P1_RECEIVER]


def test_the_readme_textfile_recipe_gives_no_duplicate_series(
    storage: Storage, db_url: str, tmp_path: Path
) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    folder = "/var/lib/node_exporter/textfile_collector"
    lines = [line for line in readme.splitlines() if "--textfile " + folder in line]
    assert len(lines) == 2, lines  # the metrics job and the audit
    collector = tmp_path / "textfile_collector"
    collector.mkdir()
    for line in lines:
        command = line.split("potato-ops ", 1)[1].replace(folder, str(collector)).split()
        command = [arg for arg in command if not arg.startswith("/var/lib/potato-ops")]
        if command[0] == "audit":
            command = [arg for arg in command if arg != "--reports-dir"] + ["--no-notebook"]
        code, out, err = cli(db_url, *command)
        assert (code, err) == (0, ""), out

    port = free_port()
    with running(
        "node_exporter",
        [
            binary("prometheus-node-exporter"),
            f"--web.listen-address=127.0.0.1:{port}",
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={collector}",
        ],
        port,
        tmp_path,
    ) as node:
        with urllib.request.urlopen(node.url + "/metrics", timeout=10) as response:
            scraped = response.read().decode()
        log = node.log_tail()

    assert "node_textfile_scrape_error 0" in scraped
    assert "collected before" not in log
    assert "potato_ops_last_audit_success_timestamp_seconds" in scraped
