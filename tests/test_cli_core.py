"""The core commands, end to end through the command line, on both databases."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from potato_ops import Storage
from potato_ops.cli import app
from tests.conftest import add_runs, add_user

runner = CliRunner()


def invoke(db_url: str, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, [*args], env={"POTATO_DATABASE_URL": db_url})
    return result.exit_code, result.stdout, result.stderr


def test_seed_validate_rebuild_restore_round_trip(db_url: str) -> None:
    assert invoke(db_url, "init-db")[0] == 0
    code, out, _ = invoke(db_url, "seed", "--users", "30", "--days", "60", "--corrupt", "0.3")
    assert code == 0
    assert "seeded 30 users" in out
    assert "corrupted 9 users" in out

    code, out, _ = invoke(db_url, "validate")
    assert code == 3
    assert "users with violations" in out

    storage = Storage.connect(db_url)
    bad = storage.validate_invariants().users_with_violations
    real = [u for u in bad if u in {x.id for x in storage.get_all_users()}]
    user = storage.get_user(real[0])

    code, out, _ = invoke(db_url, "rebuild", "--email", str(user.email), "--dry-run")
    assert code == 0
    assert out.startswith("DRY RUN: ✔")
    assert user.id in storage.validate_invariants().users_with_violations

    code, out, _ = invoke(db_url, "rebuild", "--user-id", user.id)
    assert code == 0, out
    assert user.id not in storage.validate_invariants().users_with_violations

    code, out, _ = invoke(db_url, "backups", "--user-id", user.id)
    backup_id = int(out.split()[0])
    before = storage.get_user_runs(user.id)
    code, out, _ = invoke(db_url, "restore", "--user-id", user.id, "--backup-id", str(backup_id))
    assert code == 0, out
    restored = storage.get_user_runs(user.id)
    assert [(r.start_date, r.end_date) for r in restored] != [] or before == []
    storage.close()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["rebuild", "--email", "nobody@example.com"], 1, "no user with email 'nobody@example.com'"),
        (["rebuild", "--user-id", "u1", "--from", "2024-02-01", "--to", "2024-01-01"], 1, "after"),
        (["rebuild", "--user-id", "u1", "--from", "yesterday"], 1, "is not a date"),
        (["rebuild", "--user-id", "u1", "--email", "x@y"], 2, "exactly one of"),
        (["set-timezone", "Mars/Base", "--user-id", "u1"], 1, "not an IANA timezone"),
        (["restore", "--user-id", "u1", "--backup-id", "999"], 1, "no backup with id 999"),
    ],
    ids=["unknown-email", "from-after-to", "bad-date", "both-ids", "bad-zone", "no-backup"],
)
def test_expected_failures_are_one_line(
    db_url: str, storage: Storage, args: list[str], code: int, message: str
) -> None:
    add_user(storage, "u1", ["2024-01-01"])
    got, out, err = invoke(db_url, *args)
    assert got == code
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in out + err


def test_unreachable_database_is_one_masked_line() -> None:
    url = "postgresql+psycopg://ops:Hunter2Secret@127.0.0.1:1/nowhere"
    code, out, err = invoke(url, "validate")
    assert code == 1
    assert err.startswith("error: database error:")
    assert "Hunter2Secret" not in out + err
    assert "Traceback" not in out + err


def _commands(group: typer.Typer) -> list[tuple[str, str | None]]:
    root = typer.main.get_command(group)
    found: list[tuple[str, str | None]] = []
    for name, cmd in getattr(root, "commands", {}).items():
        subs = getattr(cmd, "commands", None)
        if subs:
            found += [(f"{name} {sub}", c.help) for sub, c in subs.items()]
        else:
            found.append((name, cmd.help))
    assert found, "the command line has no commands"
    return found


def test_every_command_is_documented_in_help_and_readme() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    documented = set(re.findall(r"`potato-ops ([a-z][a-z-]*(?: [a-z][a-z-]*)?)", readme))
    missing_help = [name for name, text in _commands(app) if not (text or "").strip()]
    assert missing_help == []
    undocumented = [
        name for name, _ in _commands(app) if name not in documented and name.split()[0] not in documented
    ]
    assert undocumented == []


def test_validate_names_each_user_by_email_too(db_url: str, storage: Storage) -> None:
    add_user(storage, "u1", ["2024-01-01", "2024-01-02"], email="ana@example.com")
    add_runs(storage, "u1", [("2024-01-01", "2024-01-01")])  # the second day is not in a run
    add_runs(storage, "ghost", [("2024-01-05", "2024-01-05")])  # an orphan: its user is gone
    code, out, _ = invoke(db_url, "validate")
    assert code == 3
    lines = [line for line in out.splitlines() if " u1 " in line or " ghost " in line]
    assert lines and all("u1 <ana@example.com>" in line for line in lines if " u1 " in line)
    assert any("ghost <no such user>" in line for line in lines)
    code, out, _ = invoke(db_url, "validate", "--json")
    emails = {v["user_id"]: v["email"] for v in json.loads(out)["violations"]}
    assert emails == {"u1": "ana@example.com", "ghost": None}


def test_a_driver_error_raised_outside_sqlalchemy_is_one_line(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seed writes through the driver itself (COPY): a full disk there is one line, exit 1."""
    import sqlite3

    import psycopg

    from potato_ops.db import seed_sink

    kind = psycopg.errors.DiskFull if db_url.startswith("postgresql") else sqlite3.OperationalError

    def full(*_args: object) -> tuple[int, int]:
        raise kind("could not extend file: No space left on device")

    monkeypatch.setattr(seed_sink, "_write", full)
    code, out, err = invoke(db_url, "seed", "--users", "3", "--days", "5")
    assert code == 1
    assert err.strip() == "error: database error: could not extend file: No space left on device"
    assert "Traceback" not in out + err
