"""A small JSON Schema checker for the documented --json schemas (docs/json/*.schema.json).

It implements only the keywords those schemas use, and refuses any other keyword, so a
schema can never pass because the checker ignored part of it. No third-party dependency.
"""
import json
import os
import re

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "json")
_ANNOTATIONS = {"$schema", "$id", "title", "description", "$defs"}
_KEYWORDS = {"type", "const", "enum", "properties", "required", "additionalProperties", "propertyNames",
             "pattern", "items", "prefixItems", "minItems", "maxItems", "minimum", "maximum",
             "exclusiveMinimum", "oneOf", "$ref"} | _ANNOTATIONS


def load(name):
    with open(os.path.join(DOCS, name), encoding="utf-8") as f:
        return json.load(f)


def _type_ok(value, t):
    return {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
    }[t](value)


def _resolve(ref, doc):
    file, _, pointer = ref.partition("#")
    root = load(file) if file else doc
    node = root
    for part in pointer.strip("/").split("/") if pointer.strip("/") else []:
        node = node[part]
    return node, root


def errors(value, schema, doc=None, path="$"):
    """Every way ``value`` breaks ``schema``, as "path: reason" strings (empty when valid)."""
    doc = schema if doc is None else doc
    unknown = set(schema) - _KEYWORDS
    if unknown:
        raise ValueError(f"schema keyword(s) this checker does not implement: {sorted(unknown)}")
    out = []
    if "$ref" in schema:
        sub, root = _resolve(schema["$ref"], doc)
        out += errors(value, sub, root, path)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_ok(value, t) for t in types):
            return out + [f"{path}: {value!r:.60} is not of type {types}"]
    if "const" in schema and not (value == schema["const"] and type(value) is type(schema["const"])):
        out.append(f"{path}: {value!r:.60} is not {schema['const']!r}")
    if "enum" in schema and not any(value == e and type(value) is type(e) for e in schema["enum"]):
        out.append(f"{path}: {value!r:.60} is not one of {schema['enum']}")
    if "oneOf" in schema:
        ok = [s for s in schema["oneOf"] if not errors(value, s, doc, path)]
        if len(ok) != 1:
            out.append(f"{path}: matches {len(ok)} of the oneOf alternatives, not exactly 1")
    num = _type_ok(value, "number")
    if num and "minimum" in schema and value < schema["minimum"]:
        out.append(f"{path}: {value} < minimum {schema['minimum']}")
    if num and "maximum" in schema and value > schema["maximum"]:
        out.append(f"{path}: {value} > maximum {schema['maximum']}")
    if num and "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        out.append(f"{path}: {value} <= exclusiveMinimum {schema['exclusiveMinimum']}")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        out.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for k in schema.get("required", []):
            if k not in value:
                out.append(f"{path}: missing key {k!r}")
        for k, v in value.items():
            if "propertyNames" in schema:
                out += errors(k, schema["propertyNames"], doc, f"{path}.<key {k!r}>")
            if k in props:
                out += errors(v, props[k], doc, f"{path}.{k}")
            elif schema.get("additionalProperties") is False:
                out.append(f"{path}: unexpected key {k!r}")
            elif isinstance(schema.get("additionalProperties"), dict):
                out += errors(v, schema["additionalProperties"], doc, f"{path}.{k}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            out.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            out.append(f"{path}: more than {schema['maxItems']} items")
        prefix = schema.get("prefixItems", [])
        for i, item in enumerate(value):
            if i < len(prefix):
                out += errors(item, prefix[i], doc, f"{path}[{i}]")
            elif "items" in schema:
                out += errors(item, schema["items"], doc, f"{path}[{i}]")
    return out


def check(value, schema_file):
    """Assert ``value`` matches docs/json/``schema_file``."""
    errs = errors(value, load(schema_file))
    assert not errs, "\n".join(errs[:20])
