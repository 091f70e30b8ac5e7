"""The TypeScript and Pulumi YAML consumers (examples/typescript, examples/yaml) use the package as its
schema says: the package reference names this component package, the resource type exists, and every
argument (at every nesting level) and every output they read is a property of the generated schema."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from convex_gcp import provider_host
from tests.conftest import ROOT

EXAMPLES = ROOT / "examples"
TOKEN = "convex-gcp:index:ConvexOnGcp"


@pytest.fixture(scope="module")
def schema() -> dict:
    return provider_host.schema()


def unknown_keys(schema: dict, properties: dict, value: dict, path: str) -> list[str]:
    """Keys of `value` that the schema's `properties` (following $ref types) do not have."""
    found = []
    for key, item in value.items():
        where = f"{path}.{key}" if path else key
        if key not in properties:
            found.append(where)
            continue
        ref = properties[key].get("$ref", "")
        if isinstance(item, dict) and ref.startswith("#/types/"):
            found += unknown_keys(schema, schema["types"][ref.split("#/types/")[1]]["properties"], item, where)
    return found


def missing_required(schema: dict, resource: dict, args: dict) -> list[str]:
    return [key for key in resource.get("requiredInputs", []) if key not in args]


def package_reference(example: Path) -> Path:
    """The `packages` entry of an example's Pulumi.yaml, resolved: a checkout of this repository."""
    project = yaml.safe_load((example / "Pulumi.yaml").read_text())
    source = project["packages"]["convex-gcp"]
    source = source["source"] if isinstance(source, dict) else source
    return (example / source).resolve()


@pytest.mark.parametrize("name", ["typescript", "yaml"])
def test_package_reference_is_this_component_package(name, schema):
    target = package_reference(EXAMPLES / name)
    assert target == ROOT
    assert yaml.safe_load((target / "PulumiPlugin.yaml").read_text()) == {"runtime": "python"}
    assert schema["name"] == "convex-gcp"
    assert (EXAMPLES / name / "README.md").is_file()


def test_yaml_example_matches_the_schema(schema):
    program = yaml.safe_load((EXAMPLES / "yaml" / "Pulumi.yaml").read_text())
    assert program["runtime"] == "yaml"
    [(name, resource)] = program["resources"].items()
    assert resource["type"] == TOKEN and TOKEN in schema["resources"]
    component = schema["resources"][TOKEN]
    assert unknown_keys(schema, component["inputProperties"], resource["properties"], "") == []
    assert missing_required(schema, component, resource["properties"]) == []
    used = {m for expression in program["outputs"].values() for m in re.findall(rf"\$\{{{re.escape(name)}\.(\w+)\}}", expression)}
    assert used and used <= set(component["properties"]), used - set(component["properties"])


def ts_object_literal(source: str, start: int) -> str:
    """The balanced `{...}` beginning at source[start]."""
    depth = 0
    for index in range(start, len(source)):
        depth += {"{": 1, "}": -1}.get(source[index], 0)
        if depth == 0:
            return source[start:index + 1]
    raise AssertionError("unbalanced object literal")


def ts_to_json(literal: str) -> dict:
    """A TypeScript object literal of plain values as JSON: calls and `??` defaults become null."""
    text = re.sub(r"//[^\n]*", "", literal)
    text = re.sub(r"[A-Za-z_][\w.]*\([^()]*\)(\s*\?\?\s*(\"[^\"]*\"|[\w.]+))?", "null", text)
    text = re.sub(r"(?m)^(\s*)([A-Za-z_]\w*)\s*:", r'\1"\2":', text)
    text = re.sub(r",(\s*[}\]])", r"\1", text)
    return json.loads(text)


def test_typescript_example_matches_the_schema(schema):
    example = EXAMPLES / "typescript"
    source = (example / "index.ts").read_text()
    imported = re.search(r'import \* as (\w+) from "(@pulumi/convex-gcp)";', source)
    assert imported, "index.ts imports the generated SDK"
    alias = imported.group(1)
    # The SDK `pulumi package add` generates for package convex-gcp is @pulumi/convex-gcp, linked from sdks/.
    dependencies = json.loads((example / "package.json").read_text())["dependencies"]
    assert dependencies["@pulumi/convex-gcp"] == "file:sdks/convex-gcp"
    call = re.search(rf'const (\w+) = new {alias}\.(\w+)\("[^"]+", ', source)
    assert call, "index.ts instantiates the component"
    variable, class_name = call.groups()
    assert f"convex-gcp:index:{class_name}" == TOKEN
    args = ts_to_json(ts_object_literal(source, call.end()))
    component = schema["resources"][TOKEN]
    assert unknown_keys(schema, component["inputProperties"], args, "") == []
    assert missing_required(schema, component, args) == []
    used = set(re.findall(rf"\b{variable}\.(\w+)", source))
    assert used and used <= set(component["properties"]), used - set(component["properties"])


def test_the_check_catches_a_misspelt_property(schema):
    component = schema["resources"][TOKEN]
    assert unknown_keys(schema, component["inputProperties"], {"database": {"tierr": "x"}, "vm": {"machineType": "e2"}}, "") == ["database.tierr"]
    args = ts_to_json('{\n  project: gcp.require("project"),\n  region: gcp.get("region") ?? "us-central1",\n  vm: {\n    machineType: "e2",\n  },\n}')
    assert args == {"project": None, "region": None, "vm": {"machineType": "e2"}}
