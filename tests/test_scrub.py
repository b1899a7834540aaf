"""Secrets are found in the environment, scrubbed from text, and refused when they survive."""

from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path
from urllib.parse import quote

import nbformat
import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from potato_ops.cli import app as cli_app
from potato_ops.config import mask_url, resolve_database_url
from potato_ops.errors import SecretLeakError
from potato_ops.exitcodes import ExitCode
from potato_ops.notebook_runs.archive import render_html, renderer_assets
from potato_ops.redact import (
    SecretScrubFilter,
    base64_fragments,
    collect_secrets,
    ensure_no_secrets,
    find_secret,
    is_strong_secret,
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


# -- a password with an unencoded "@", short secrets, settings in secret-named variables ---------

AT_URL = "postgresql+psycopg://postgres:S3cr@tPw9q@127.0.0.1/db"


def test_a_password_with_an_unencoded_at_is_masked_up_to_the_last_at() -> None:
    assert mask_url(AT_URL) == "postgresql+psycopg://postgres:***@127.0.0.1/db"
    assert mask_url(f"see '{AT_URL}' and mail ops@example.com") == (
        "see 'postgresql+psycopg://postgres:***@127.0.0.1/db' and mail ops@example.com"
    )
    assert "S3cr@tPw9q" in collect_secrets({"POTATO_DATABASE_URL": AT_URL})


def test_a_password_with_an_unencoded_at_connects_to_the_host_after_it() -> None:
    parsed = make_url(resolve_database_url(AT_URL))
    assert (parsed.password, parsed.host, parsed.database) == ("S3cr@tPw9q", "127.0.0.1", "db")


def test_no_part_of_a_password_with_an_at_reaches_stderr(tmp_path: Path) -> None:
    # A database that does not exist on the local server (or no server at all): either way the
    # command fails with one line, and that line must hold no piece of the password.
    url = f"postgresql+psycopg://postgres:S3cr@tPw9q@127.0.0.1:5432/potato_missing_{tmp_path.name}"
    result = CliRunner().invoke(cli_app, ["metrics", "--database-url", url])

    assert result.exit_code == ExitCode.ERROR
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "tPw9q" not in result.output and "S3cr" not in result.output


def test_a_short_password_does_not_block_an_html_page() -> None:
    # Every nbconvert page embeds icons whose base64 holds a fragment of "S3cr" by chance.
    page = render_html(nbformat.v4.new_notebook(), "empty", summary=False)  # type: ignore[no-untyped-call]
    assert any(f in page for f in base64_fragments("S3cr"))
    ensure_no_secrets(page, ["S3cr"], "page.html")
    assert scrub_text(page, ["S3cr"]) == page


def test_a_strong_secrets_base64_is_found_but_not_inside_the_renderers_assets() -> None:
    page = render_html(nbformat.v4.new_notebook(), "empty", summary=False)  # type: ignore[no-untyped-call]
    asset = max(renderer_assets(), key=len)
    encoded = base64.b64encode(f"pw={SECRET}".encode()).decode()
    # Pretend the asset held the secret's fragment: only the run's own content counts.
    hidden = page.replace(asset, asset[:40] + encoded + asset[40:])
    assert find_secret(hidden, [SECRET]) == "base64-encoded"
    assert find_secret(hidden, [SECRET], known_assets={asset[:40] + encoded + asset[40:]}) is None
    assert find_secret(page + encoded, [SECRET], known_assets=renderer_assets()) == "base64-encoded"


@pytest.mark.parametrize(
    ("secret", "strong"),
    [
        ("S3cr", False),
        ("postgres", False),
        ("abcdefghijk", False),
        ("hunter22", True),
        ("S3cr@tPw9q", True),
        ("correcthorsebattery", True),
    ],
)
def test_strong_secrets_are_long_or_mixed(secret: str, strong: bool) -> None:
    assert is_strong_secret(secret) is strong


def test_a_weak_secret_is_masked_only_as_a_whole_token() -> None:
    text = "S3cr and xS3cr and S3cr_1 and 'S3cr' and postgresql://u:S3cr@h/db"
    assert scrub_text(text, ["S3cr"], mask_patterns=False) == (
        "*** and xS3cr and S3cr_1 and '***' and postgresql://u:***@h/db"
    )
    assert find_secret("xS3crY", ["S3cr"]) is None
    assert find_secret("(S3cr)", ["S3cr"]) == "plain"


def test_a_strong_secret_is_found_inside_longer_words() -> None:
    assert scrub_text(f"x{SECRET}y", [SECRET]) == "x***y"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"SOME_TOKEN": "runs"}, []),
        ({"SECRET_BACKEND": "vault", "TOKEN_KIND": "Bearer"}, []),
        ({"SOME_TOKEN": "runs-4-ever"}, ["runs-4-ever"]),
        ({"SOME_TOKEN": "correcthorsebattery"}, ["correcthorsebattery"]),
        ({"PGPASSWORD": "runs"}, ["runs"]),
    ],
    ids=["plain-word", "setting-names", "not-a-word", "long-passphrase", "password-always"],
)
def test_settings_in_secret_named_variables_are_not_secrets(
    environ: dict[str, str], expected: list[str]
) -> None:
    assert collect_secrets(environ) == expected


def test_a_token_set_to_a_common_word_does_not_mangle_the_record(tmp_path: Path) -> None:
    secrets = collect_secrets({"SOME_TOKEN": "runs", "POTATO_DATABASE_URL": URL})
    record = "3 runs rebuilt; runs table ok"
    assert scrub_text(record, secrets) == record
