"""End-to-end tests of `freshet validate`: exit codes, the summary, and the FILE:LINE:COL error format.

Run by ctest (which sets FRESHET_BIN), or by hand:
    FRESHET_BIN=build/freshet .venv/bin/python -m pytest -q tests/validate_test.py
"""
import os
import re
import json
import subprocess
import textwrap

import pytest

FRESHET = os.environ.get("FRESHET_BIN")
pytestmark = pytest.mark.skipif(not FRESHET, reason="set FRESHET_BIN to the freshet binary")

VALID = textwrap.dedent("""\
    name: fraud
    entity: user_id
    timestamp: ts
    watermark:
      max_out_of_orderness: 5s
      allowed_lateness: 1m
    source: {type: file, path: events.jsonl}
    features:
      - name: purchase_count_30m
        aggregation: count
        where: "type == 'purchase'"
        window: {type: sliding, size: 30m, slide: 1m}
      - name: avg_txn_amount_1h
        aggregation: mean
        field: amount
        where: "type == 'purchase'"
        window: {type: sliding, size: 1h}
      - name: unique_categories_session
        aggregation: count_distinct
        field: category
        where: "type == 'view'"
        window: {type: session, gap: 30m}
    """)

# Three problems: a typo'd key (line 6, column 5), a duration without a unit (line 7, column 35) and
# an unknown aggregation (line 9, column 18).
INVALID = textwrap.dedent("""\
    name: t
    entity: user_id
    timestamp: ts
    features:
      - name: a
        aggregaton: count
        window: {type: sliding, size: 30}
      - name: b
        aggregation: avg
        field: amount
        window: {type: lifetime}
    """)


def run(*args):
    return subprocess.run([FRESHET, "validate", *args], capture_output=True, text=True, timeout=30)


def write(tmp_path, text, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_valid_spec_prints_summary_and_exits_0(tmp_path):
    result = run("--spec", write(tmp_path, VALID))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert "fraud" in out and "user_id" in out
    assert "max_out_of_orderness 5s, allowed_lateness 1m" in out
    assert str(tmp_path / "events.jsonl") in out  # Resolved against the spec's folder.
    rows = [line.split() for line in out.splitlines() if line.startswith("  ")]
    assert [row[0] for row in rows] == ["purchase_count_30m", "avg_txn_amount_1h", "unique_categories_session"]
    assert rows[0][1] == "count()" and rows[1][1] == "mean(amount)" and rows[2][1] == "count_distinct(category)"
    assert "sliding 30m every 1m" in out.splitlines()[-3]
    assert "sliding 1h (continuous)" in out.splitlines()[-2]
    assert "session gap 30m" in out.splitlines()[-1]


def test_json_summary_for_tools(tmp_path):
    result = run("--spec", write(tmp_path, VALID), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["spec"], doc["entity"], doc["timestamp"], doc["offline_path"]) == ("fraud", "user_id", "ts", None)
    assert [(f["name"], f["aggregation"], f["field"]) for f in doc["features"]] == [
        ("purchase_count_30m", "count", ""), ("avg_txn_amount_1h", "mean", "amount"),
        ("unique_categories_session", "count_distinct", "category")]
    assert doc["features"][0]["window"] == "sliding 30m every 1m"
    with_offline = VALID.replace("features:", "offline: {path: tables}\nfeatures:", 1)
    doc = json.loads(run("--spec", write(tmp_path, with_offline, "other.yaml"), "--json").stdout)
    assert doc["offline_path"] == str(tmp_path / "tables")  # Resolved against the spec's folder.


def test_invalid_spec_reports_every_error_and_exits_2(tmp_path):
    path = write(tmp_path, INVALID)
    result = run("--spec", path)
    assert result.returncode == 2
    assert result.stdout == ""
    pattern = re.compile(r"^(.*):(\d+):(\d+): error: (.+)$")
    errors = [pattern.match(line) for line in result.stderr.splitlines() if ": error: " in line]
    assert all(errors), result.stderr
    assert [(m.group(1), int(m.group(2)), int(m.group(3))) for m in errors] == [
        (path, 6, 5), (path, 7, 35), (path, 9, 18)], result.stderr
    assert "did you mean 'aggregation'?" in errors[0].group(4)
    assert "write 30m, not 30" in errors[1].group(4)
    assert "unknown aggregation 'avg'" in errors[2].group(4)


def test_yaml_syntax_error_has_position(tmp_path):
    path = write(tmp_path, "name: t\nfeatures: [\n")
    result = run("--spec", path)
    assert result.returncode == 2
    assert re.match(re.escape(path) + r":3:1: error: invalid YAML", result.stderr), result.stderr


def test_missing_file_exits_2_with_clear_message(tmp_path):
    path = str(tmp_path / "nope.yaml")
    result = run("--spec", path)
    assert result.returncode == 2
    assert path in result.stderr and "No such file" in result.stderr


def test_no_spec_is_a_usage_error():
    result = run()
    assert result.returncode == 2
    assert "--spec" in result.stderr


def test_reference_lists_every_section():
    result = run("--reference")
    assert result.returncode == 0
    for heading in ["### Top level", "### `watermark`", "### `source`", "### `features[]`", "### `features[].window`"]:
        assert heading in result.stdout
    assert "- `aggregation` (one of `count`," in result.stdout


# `type == purchase`: purchase without quotes is a field name, so the condition compares two fields and is always
# false for events without a `purchase` field. With a schema it is an error; without one, a warning.
UNQUOTED = textwrap.dedent("""\
    name: t
    entity: user_id
    timestamp: ts
    {schema}features:
      - name: purchases
        aggregation: count
        where: "type == purchase"
        window: {{type: lifetime}}
    """)
SCHEMA = "schema:\n  user_id: string\n  ts: timestamp\n  type: string\n"


def test_unquoted_word_with_a_schema_is_a_located_error(tmp_path):
    path = write(tmp_path, UNQUOTED.format(schema=SCHEMA))
    result = run("--spec", path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"{path}:11:21: error: in 'where': purchase (without quotes) is a field name, and 'schema' does not declare "
        f"a field 'purchase'; to compare with the text, quote it: type == 'purchase'\n1 error in {path}\n")
    # Quoted as suggested, the spec is valid, and the summary says it has a schema.
    fixed = write(tmp_path, UNQUOTED.format(schema=SCHEMA).replace("type == purchase", "type == 'purchase'"), "ok.yaml")
    result = run("--spec", fixed)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "schema:    3 fields\n" in result.stdout


def test_unquoted_word_without_a_schema_is_a_warning_on_stderr(tmp_path):
    path = write(tmp_path, UNQUOTED.format(schema=""))
    result = run("--spec", path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        f"{path}:7:21: warning: in 'where' of feature 'purchases': purchase (without quotes) is a field name, and "
        f"nothing else in the spec reads a field 'purchase', so this compares with a field that events most likely "
        f"lack (always false); to compare with the text, quote it: type == 'purchase'\n")
    assert result.stdout.startswith(f"{path}: ok\n")
    # --json output stays clean: the warning is on stderr only.
    result = run("--spec", path, "--json")
    assert json.loads(result.stdout)["features"][0]["name"] == "purchases"
    assert "warning" in result.stderr
    # Every other command warns the same way when it loads the spec (here historical, before it fails on the
    # missing events file).
    other = subprocess.run([FRESHET, "historical", "--spec", path, "--events", str(tmp_path / "none.jsonl"),
                            "--entities", str(tmp_path / "none.csv"), "--output", str(tmp_path / "out.csv")],
                           capture_output=True, text=True, timeout=30)
    assert f"{path}:7:21: warning: in 'where' of feature 'purchases'" in other.stderr, other.stderr


def test_the_example_specs_are_free_of_warnings():
    examples = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "fraud")
    for name in ("fraud.yaml", "live.yaml"):
        result = run("--spec", os.path.join(examples, name))
        assert result.returncode == 0, result.stderr
        assert result.stderr == "", result.stderr
