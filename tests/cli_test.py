"""End-to-end tests of the `freshet` command line itself: what a mistyped or unknown subcommand gets.

Run by ctest (which sets FRESHET_BIN), or by hand:
    FRESHET_BIN=build/freshet .venv/bin/python -m pytest -q tests/cli_test.py
"""
import os
import subprocess

import pytest

FRESHET = os.environ.get("FRESHET_BIN")
pytestmark = pytest.mark.skipif(not FRESHET, reason="set FRESHET_BIN to the freshet binary")

COMMANDS = ["validate", "historical", "generate", "run", "serve", "skew", "backfill"]


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
