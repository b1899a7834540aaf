"""``potato-ops alerts alertmanager``: Alertmanager's own amtool accepts the configuration and
routes P0, P1 and P2 to three receivers; the business hours and the inhibit rule are in it.

Skipped loudly without amtool (Debian package prometheus-alertmanager); failed under CI=true.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from potato_ops.cli import app
from tests.prom_servers import binary

runner = CliRunner()


def generate(tmp_path: Path, *args: str) -> Path:
    target = tmp_path / "alertmanager.yml"
    result = runner.invoke(app, ["alerts", "alertmanager", "-o", str(target), *args])
    assert (result.exit_code, result.stderr) == (0, ""), result.stdout
    return target


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("amtool"), *args], capture_output=True, text=True, timeout=60, check=False)


def test_amtool_accepts_the_configuration(tmp_path: Path) -> None:
    config = generate(tmp_path, "--business-hours", "08:30-18:00", "--timezone", "Europe/Berlin")

    checked = amtool("check-config", str(config))

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout
    assert "1 inhibit rules" in checked.stdout and "4 receivers" in checked.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        pytest.param(["severity=P0"], "potato-ops-p0-database-team-and-oncall", id="P0"),
        pytest.param(["severity=P1"], "potato-ops-p1-engineering-business-hours", id="P1"),
        pytest.param(["severity=P2"], "potato-ops-p2-support-ticket", id="P2"),
        pytest.param(["severity=P3"], "potato-ops-unrouted", id="unknown-severity"),
        pytest.param(["alertname=Other"], "potato-ops-unrouted", id="no-severity"),
    ],
)
def test_amtool_routes_each_severity_to_its_receiver(
    tmp_path: Path, labels: list[str], receiver: str
) -> None:
    config = generate(tmp_path)

    routed = amtool("config", "routes", "test", "--config.file", str(config), "alertname=PotatoOpsX", *labels)

    assert routed.returncode == 0, routed.stdout + routed.stderr
    assert routed.stdout.strip() == receiver


def test_p1_notifies_in_business_hours_and_a_p0_inhibits_p1_and_p2(tmp_path: Path) -> None:
    config = yaml.safe_load(
        generate(tmp_path, "--business-hours", "08:30-18:00", "--timezone", "Europe/Berlin").read_text()
    )

    p1 = next(r for r in config["route"]["routes"] if r["matchers"] == ['severity="P1"'])
    [hours] = config["time_intervals"]
    assert p1["active_time_intervals"] == [hours["name"]]
    assert hours["time_intervals"] == [
        {
            "weekdays": ["monday:friday"],
            "times": [{"start_time": "08:30", "end_time": "18:00"}],
            "location": "Europe/Berlin",
        }
    ]
    assert config["inhibit_rules"] == [
        {
            "source_matchers": ['severity="P0"'],
            "target_matchers": ['severity=~"P1|P2"'],
            "equal": ["job", "env", "database"],
        }
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--business-hours", "9-17"], "expected HH:MM-HH:MM", id="malformed"),
        pytest.param(["--business-hours", "17:00-09:00"], "the start must be before the end", id="reversed"),
        pytest.param(["--business-hours", "09:00-25:00"], "25:00 is not a time of day", id="hour-25"),
        pytest.param(["--timezone", "Mars/Olympus"], "not an IANA timezone name", id="zone"),
    ],
)
def test_bad_business_hours_are_one_line(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["alerts", "alertmanager", *args])

    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and message in result.stderr and result.stderr.count("\n") == 1
