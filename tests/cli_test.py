"""End-to-end tests of the `freshet` command line itself: what a mistyped or unknown subcommand gets.

Run by ctest (which sets FRESHET_BIN), or by hand:
    FRESHET_BIN=build/freshet .venv/bin/python -m pytest -q tests/cli_test.py
"""
import os
import subprocess

import pytest

FRESHET = os.environ.get("FRESHET_BIN")
pytestmark = pytest.mark.skipif(not FRESHET, reason="set FRESHET_BIN to the freshet binary")

COMMANDS = ["validate", "historical", "generate", "run", "serve", "skew", "backfill", "explain"]


def freshet(*args):
    return subprocess.run([FRESHET, *args], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("typo,meant", [("valdate", "validate"), ("histroical", "historical"), ("rum", "run"),
                                        ("Serve", "serve")])
def test_a_mistyped_command_gets_the_closest_one(typo, meant):
    r = freshet(typo, "--spec", "spec.yaml")
    assert r.returncode == 2, r
    assert r.stdout == ""
    assert f"unknown command '{typo}'; did you mean '{meant}'?" in r.stderr, r.stderr
    assert "A subcommand is required" not in r.stderr


def test_an_unknown_command_far_from_every_one_gets_the_list():
    r = freshet("deploy")
    assert r.returncode == 2, r
    assert "unknown command 'deploy'" in r.stderr, r.stderr
    assert "did you mean" not in r.stderr
    for command in COMMANDS:
        assert command in r.stderr, (command, r.stderr)


def test_no_command_and_known_commands_are_unchanged():
    r = freshet()
    assert r.returncode == 2, r
    assert "A subcommand is required" in r.stderr, r.stderr
    r = freshet("validate", "--help")
    assert r.returncode == 0, r
    assert "--spec" in r.stdout
    r = freshet("--version")
    assert r.returncode == 0, r
    assert "freshet" in r.stdout


# ---- Bearer tokens: a blank one is a start-up error, never "no authentication" ----

RUN_SPEC = """name: blank_token
entity: user_id
timestamp: ts
source: {type: file, path: events.jsonl}
serve: {port: 0}
features:
  - {name: n_events, aggregation: count, window: {type: lifetime}}
"""

SERVE_SPEC = RUN_SPEC.replace("source: {type: file, path: events.jsonl}\n",
                              "online: {type: redis, host: 127.0.0.1, port: 1}\n")


def start_with_token(tmp_path, command, token_file_text=None, env_token=None):
    """`freshet run` (a file source that ends, so that a start that is let through exits 0 at once) or
    `freshet serve`, with a token file holding `token_file_text` or FRESHET_TOKEN set to `env_token`."""
    (tmp_path / "events.jsonl").write_text('{"user_id":"u1","ts":1767225600000}\n')
    spec = tmp_path / "spec.yaml"
    spec.write_text(RUN_SPEC if command == "run" else SERVE_SPEC)
    args = [FRESHET, command, "--spec", str(spec)]
    if command == "run":
        args += ["--data-dir", str(tmp_path / "data"), "--exit-at-end"]
    env = {k: v for k, v in os.environ.items() if k != "FRESHET_TOKEN"}
    if token_file_text is not None:
        token_file = tmp_path / "token"
        token_file.write_bytes(token_file_text.encode())
        args += ["--token-file", str(token_file)]
    if env_token is not None:
        env["FRESHET_TOKEN"] = env_token
    try:
        # A refused start exits at once; one let through serves until stopped (serve) or exits 0 (run).
        return subprocess.run(args, capture_output=True, text=True, timeout=10, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"freshet {command} started and served instead of refusing the token: {e.stderr!r}")


@pytest.mark.parametrize("command", ["run", "serve"])
@pytest.mark.parametrize("text", [" ", "\r", "\t", " \t \r", "\n", " \nsecond-line-token\n", "\r\n"])
def test_a_token_file_whose_first_line_is_blank_is_a_startup_error(tmp_path, command, text):
    r = start_with_token(tmp_path, command, token_file_text=text)
    assert r.returncode == 2, r
    token_file = str(tmp_path / "token")
    assert f"the first line of '{token_file}'" in r.stderr, r.stderr
    assert "bearer token" in r.stderr and "--token-file" in r.stderr, r.stderr
    assert "serving" not in r.stderr, r.stderr
    assert not (tmp_path / "data").exists() or command == "serve", "nothing may be started"


@pytest.mark.parametrize("command", ["run", "serve"])
@pytest.mark.parametrize("value", [" ", "\t", "\r\n", "   "])
def test_a_blank_freshet_token_is_a_startup_error(tmp_path, command, value):
    r = start_with_token(tmp_path, command, env_token=value)
    assert r.returncode == 2, r
    assert "FRESHET_TOKEN" in r.stderr and "only whitespace" in r.stderr, r.stderr
    assert "unset it" in r.stderr, r.stderr
    assert "serving" not in r.stderr, r.stderr


def test_a_token_with_surrounding_whitespace_still_starts(tmp_path):
    # A token file written on Windows ("token\r\n") or with spaces around the token is not blank: it starts.
    r = start_with_token(tmp_path, "run", token_file_text=" s3cret \r\n")
    assert r.returncode == 0, r
    r = start_with_token(tmp_path, "run", env_token="s3cret\n")
    assert r.returncode == 0, r
    # No token at all (FRESHET_TOKEN unset or empty) is still "no authentication", as documented.
    r = start_with_token(tmp_path, "run", env_token="")
    assert r.returncode == 0, r


def test_a_missing_events_file_says_how_to_make_one(tmp_path) -> None:
    (tmp_path / "spec.yaml").write_text("name: t\nentity: user_id\ntimestamp: ts\nsource: {type: file, path: events.jsonl}\n"
                                        "serve: {port: 0}\nfeatures:\n"
                                        "  - {name: n, aggregation: count, window: {type: lifetime}}\n")
    result = subprocess.run([FRESHET, "run", "--spec", str(tmp_path / "spec.yaml"), "--data-dir", str(tmp_path / "data"),
                             "--exit-at-end"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "events.jsonl" in result.stderr and "freshet generate" in result.stderr, result.stderr
