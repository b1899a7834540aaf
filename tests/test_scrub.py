"""Secrets are found in the environment, scrubbed from text, and refused when they survive."""

from __future__ import annotations

import base64
import html
import json
import logging
from urllib.parse import quote

import pytest

from potato_ops.errors import SecretLeakError
from potato_ops.redact import (
    SecretScrubFilter,
    collect_secrets,
    ensure_no_secrets,
    find_secret,
    scrub_text,
    url_passwords,
)

SECRET = "Sup3rS3cret"
URL = f"postgresql+psycopg://ops:{SECRET}@localhost/x"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"POTATO_DATABASE_URL": URL}, [SECRET]),
        ({"OTHER_DSN": "postgresql://u:p%40ss%2Fw0rd@h/db"}, ["p%40ss%2Fw0rd", "p@ss/w0rd"]),
        ({"PGPASSWORD": "hunter22", "GITHUB_TOKEN": "ghp_abc123"}, ["ghp_abc123", "hunter22"]),
        (
            {"MY_API_KEY": "k3y-value", "AWS_SECRET_ACCESS_KEY": "abcd/efgh"},
            ["k3y-value", "abcd/efgh"],
        ),
        ({"DB_PASSWORD": "abc"}, []),
        ({"TOKENIZERS_PARALLELISM": "false", "TOKEN_TTL": "3600", "SECRET_FLAG": "yes"}, []),
        ({"HOME": "/root", "POTATO_DATABASE_URL": "sqlite:///x.sqlite3"}, []),
        ({"URLS": f"a https://x:{SECRET}@h1/ b http://y:another-pw@h2/"}, ["another-pw", SECRET]),
    ],
    ids=[
        "database-url",
        "url-encoded-password",
        "secret-names",
        "api-key-and-secret",
        "too-short",
        "booleans-and-numbers",
        "no-password",
        "several-urls",
    ],
)
def test_collect_secrets(environ: dict[str, str], expected: list[str]) -> None:
    assert sorted(collect_secrets(environ)) == sorted(expected)


def test_collect_secrets_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POTATO_DATABASE_URL", URL)
    assert SECRET in collect_secrets()


def test_url_passwords_gives_decoded_and_written_forms() -> None:
    assert url_passwords("postgresql://u:a%2Fb12@h/db and more") == {"a/b12", "a%2Fb12"}
    assert url_passwords("no url here") == set()


@pytest.mark.parametrize(
    "shown",
    [
        f"connecting to {URL}",
        f"password is {SECRET}!",
        json.dumps({"note": f'quote"{SECRET}'}),
        f"<b>{html.escape(SECRET)}</b>",
        f"https://example.com/?p={quote(SECRET + '/&')}",
        f"\x1b[32m'{SECRET}'\x1b[39m",
    ],
    ids=["url", "raw", "json", "html", "url-encoded", "coloured"],
)
def test_scrub_text_removes_every_plain_form(shown: str) -> None:
    scrubbed = scrub_text(shown, [SECRET, SECRET + "/&"])
    assert SECRET not in scrubbed
    assert "***" in scrubbed
    assert find_secret(scrubbed, [SECRET]) is None


def test_scrub_text_strips_colour_only_when_it_splits_a_secret() -> None:
    split = "Sup3r\x1b[1mS3cret\x1b[0m and \x1b[31mred\x1b[0m"
    assert scrub_text(split, [SECRET]) == "*** and red"
    whole = f"\x1b[31m{SECRET}\x1b[0m"
    assert scrub_text(whole, [SECRET]) == "\x1b[31m***\x1b[0m"


def test_scrub_text_masks_urls_and_assignments_even_without_known_secrets() -> None:
    assert scrub_text("postgresql://ops:pw1234@h/db password=hunter22", []) == (
        "postgresql://ops:***@h/db password=***"
    )


def test_ensure_no_secrets_names_the_file_not_the_secret() -> None:
    with pytest.raises(SecretLeakError) as caught:
        ensure_no_secrets(f"x {SECRET} y".encode(), [SECRET], "run/01.result.json")
    assert "run/01.result.json" in str(caught.value)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize("prefix", ["", "a", "ab", "abc"], ids=["align0", "align1", "align2", "align3"])
def test_base64_encoded_secret_is_detected_at_any_alignment(prefix: str) -> None:
    blob = base64.b64encode(f"{prefix}password={SECRET};".encode()).decode()
    assert find_secret(blob, [SECRET]) == "base64-encoded"
    wrapped = "\\n".join(blob[i : i + 8] for i in range(0, len(blob), 8))
    assert find_secret(wrapped, [SECRET]) == "base64-encoded"
    with pytest.raises(SecretLeakError):
        ensure_no_secrets(blob, [SECRET], "x.ipynb")


def test_unrelated_base64_passes() -> None:
    blob = base64.b64encode(bytes(range(256)) * 40).decode()
    ensure_no_secrets(blob, [SECRET], "image.png")
    ensure_no_secrets("nothing to see", [], "empty")


def test_log_filter_scrubs_messages(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("potato_ops.test_scrub")
    scrubber = SecretScrubFilter([SECRET])
    log.addFilter(scrubber)
    try:
        with caplog.at_level(logging.INFO, logger="potato_ops.test_scrub"):
            log.info("value %s and %s", SECRET, URL)
    finally:
        log.removeFilter(scrubber)
    assert caplog.messages == ["value *** and postgresql+psycopg://ops:***@localhost/x"]
