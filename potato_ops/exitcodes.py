"""Exit codes of the ``potato-ops`` command, one meaning each (documented in README.md)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a ``potato-ops`` exit status means."""

    OK = 0
    ERROR = 1  # an expected failure: bad input, user not found, schema missing, ...
    USAGE = 2  # the command line itself is wrong (unknown option, missing argument)
    PROBLEM_FOUND = 3  # the procedure found what it was asked to report (violations, rollback)
    INVALID_PARAMETERS = 4  # notebook parameters refused before the kernel started
    EXECUTION_FAILED = 5  # a notebook cell raised or timed out
    ALERT_P2 = 10
    ALERT_P1 = 11
    ALERT_P0 = 12
    PUSH_FAILED = 13  # the figures could not be pushed (when no alert sets a higher code)
    INTERRUPTED = 130  # stopped by Ctrl-C (SIGINT): 128 + 2, as a shell reports it
    TERMINATED = 143  # stopped by SIGTERM (a scheduler, a service manager): 128 + 15
