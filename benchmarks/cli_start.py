"""Time how long ``potato-ops`` takes to answer ``--help``, ``--version``, ``run --list`` and a
run's parameter check, against bare Python.

The yardstick is ``python -c pass`` with the same interpreter, run interleaved with the timed
commands in the same process, so all see the same machine load and file caches. Each command is
a fresh process, as a person or a cron job starts it. Target: the median of each command under
0.5 s above the bare interpreter's median. Then ``python -X importtime`` on ``--help`` and on
each subcommand's ``--help``, listing the modules whose import took longest (cumulative), so a
heavy import that slipped back into the start-up path is named.

    .venv/bin/python benchmarks/cli_start.py
    .venv/bin/python benchmarks/cli_start.py --runs 20 --top 15

Prints a table; exits 0 whatever the figures (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

TARGET_ABOVE_BARE_S = 0.5
ENTRY = "import sys; from potato_ops.cli import main; sys.argv[0] = 'potato-ops'; main()"
SUBCOMMANDS = (
    "rebuild",
    "validate",
    "bulk-rebuild",
    "run",
    "audit",
    "metrics",
    "alerts export",
    "reports list",
    "demo",
)


def wall_time(args: list[str]) -> float:
    """Return the wall time in seconds of one run of the command (its output discarded)."""
    started = time.perf_counter()
    subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started


def import_times(argv: list[str]) -> list[tuple[int, str]]:
    """Return (cumulative microseconds, module) of every import the command made, slowest first."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", ENTRY, *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    found = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, _, rest = line.partition(":")
        _self_us, cumulative, name = (part.strip() for part in rest.split("|"))
        found.append((int(cumulative), name))
    return sorted(found, reverse=True)


def main() -> None:
    """Print the timing table and the slowest imports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="repetitions of each command")
    parser.add_argument("--top", type=int, default=10, help="slowest imports to list")
    options = parser.parse_args()

    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "potato-ops --help": [sys.executable, "-c", ENTRY, "--help"],
        "potato-ops --version": [sys.executable, "-c", ENTRY, "--version"],
        "potato-ops run --list": [sys.executable, "-c", ENTRY, "run", "--list"],
        # A run whose parameter is refused: the check before a run, then exit 4.
        "run: parameter check": [sys.executable, "-c", ENTRY, "run", "01", "-p", "dry_run", "maybe"],
    }
    timings: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(options.runs):
        for name, args in commands.items():  # interleaved: each round sees the same load
            timings[name].append(wall_time(args))

    bare = statistics.median(timings["python -c pass"])
    print(
        f"{'command':<24} {'median s':>9} {'min s':>7} {'above bare s':>13}  target < {TARGET_ABOVE_BARE_S} s"
    )
    for name, seconds in timings.items():
        median = statistics.median(seconds)
        above = median - bare
        verdict = "" if name == "python -c pass" else ("ok" if above < TARGET_ABOVE_BARE_S else "SLOW")
        print(f"{name:<24} {median:>9.3f} {min(seconds):>7.3f} {above:>13.3f}  {verdict}")

    print(f"\nslowest imports (cumulative) of potato-ops --help, top {options.top}:")
    for micros, module in import_times(["--help"])[: options.top]:
        print(f"  {micros / 1000:>8.1f} ms  {module}")

    print(
        "\nimports at start-up of each subcommand's --help (cumulative ms of potato_ops.cli, slowest module):"
    )
    for sub in SUBCOMMANDS:
        found = import_times([*sub.split(), "--help"])
        total = next((us for us, module in found if module == "potato_ops.cli"), 0)
        heavy = [
            m
            for _, m in found
            if m.split(".")[0] in ("sqlalchemy", "polars", "matplotlib", "nbformat", "papermill")
        ]
        slowest = found[0][1] if found else "-"
        print(
            f"  {sub:<14} {total / 1000:>7.1f} ms  slowest {slowest:<28} "
            f"heavy libraries loaded: {', '.join(sorted({m.split('.')[0] for m in heavy})) or 'none'}"
        )


if __name__ == "__main__":
    main()
