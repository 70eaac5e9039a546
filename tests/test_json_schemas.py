"""Every --json document matches its documented schema (docs/json/*.schema.json, described in
docs/json/*.md): versioned, the same top-level keys whether or not something was found,
keys that are identifiers, numbers that are numbers."""
import json
import os
import re
import subprocess
import sys

import pytest

import schema_check
from conftest import SUBPROCESS_CWD, SUBPROCESS_ENV

IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")


def run_json(*args):
    p = subprocess.run([sys.executable, "-m", "tdpfast", *args, "--json"], capture_output=True, text=True,
                       timeout=300, env=SUBPROCESS_ENV, cwd=SUBPROCESS_CWD)
    return p.returncode, json.loads(p.stdout)


def walk(value, path="$", key=None):
    """(path, the key naming it or None, value) for every node."""
    yield path, key, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from walk(v, f"{path}.{k}", k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from walk(v, f"{path}[{i}]")


def assert_plain_data(doc, free_text=()):
    """Keys are identifiers (except inside free-text maps), no string is padded, and no
    string holds what should be a number."""
    for path, key, value in walk(doc):
        if key is not None:
            assert IDENT.match(key), f"{path}: key {key!r} is not an identifier"
        if isinstance(value, str) and not any(path.endswith("." + f) for f in free_text):
            assert value == value.strip(), f"{path}: padded display string {value!r}"
            assert not re.fullmatch(r"-?(0x[0-9a-f]+|\d[\d,]*(\.\d+)?)", value), f"{path}: number as string {value!r}"


@pytest.fixture(scope="module")
def fuzz_docs():
    clean = run_json("fuzz", "--max-ops", "20000", "--no-progress")
    found = run_json("fuzz", "--policy", "no-flush-on-migrate", "--max-ops", "3000000", "--budget", "600",
                     "--no-progress")
    return clean, found


def test_fuzz_json_matches_its_schema_clean_and_with_a_violation(fuzz_docs):
    (c_code, clean), (f_code, found) = fuzz_docs
    assert (c_code, f_code) == (0, 1)
    for doc in (clean, found):
        schema_check.check(doc, "fuzz.schema.json")
        assert doc["schema_version"] == 1 and doc["command"] == "fuzz"
        assert_plain_data(doc, free_text=("reproducer", "frame_state"))
    assert list(clean) == list(found)                      # one shape, in the same order
    assert clean["status"] == "clean" and clean["violation"] is None and clean["reproducer"] is None
    assert clean["ops_explored"] == 20000 and clean["config"]["max_ops"] == 20000
    assert found["status"] == "violation" and found["shrink"]["complete"] is True
    assert found["minimal"][-1]["index"] == found["violation"]["event"]
    assert isinstance(found["violation"]["gpa"], int)


def test_demo_json_matches_its_schema():
    code, doc = run_json("demo")
    assert code == 0
    schema_check.check(doc, "demo.schema.json")
    assert_plain_data(doc, free_text=("name", "frame_state"))
    assert doc["verdict"] == {"kvm_clean": True, "removals": 5, "removals_broken": 5}
    for s in doc["reuse"] + doc["migration"]:
        assert all(isinstance(a, int) for e in s["events"] for a in e["args"])


def test_policies_json_matches_its_schema():
    code, doc = run_json("policies")
    assert code == 0
    schema_check.check(doc, "policies.schema.json")
    assert {p["name"] for p in doc["policies"]} >= {"kvm", "no-flush-on-migrate"}


@pytest.mark.parametrize("name", ["fuzz", "demo", "policies", "audit"])
def test_every_documented_key_is_described_in_the_markdown(name):
    schema = schema_check.load(f"{name}.schema.json")
    with open(os.path.join(schema_check.DOCS, f"{name}.md"), encoding="utf-8") as f:
        text = f.read()
    assert f"{name}.schema.json" in text and "schema_version" in text
    for key in schema["required"]:
        assert f"`{key}`" in text, f"docs/json/{name}.md does not describe {key!r}"


def test_the_checker_is_not_vacuous(fuzz_docs):
    (_, clean), (_, found) = fuzz_docs
    schema = schema_check.load("fuzz.schema.json")
    broken = [dict(clean, schema_version="1"), dict(clean, ops_explored="20,000"),
              {k: v for k, v in clean.items() if k != "violation"}, dict(clean, extra=1),
              dict(found, violation=dict(found["violation"], gpa=hex(found["violation"]["gpa"]))),
              dict(clean, config=dict(clean["config"], ad="no"))]
    for doc in broken:
        assert schema_check.errors(doc, schema), doc
    with pytest.raises(ValueError, match="does not implement"):
        schema_check.errors(1, {"type": "integer", "multipleOf": 2})
