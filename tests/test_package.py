"""The component package: the schema the SDK's own analyzer generates offline (inputs mirror every
configuration key, outputs are the outputs contract, nothing is secret), the component built through the
SDK's ComponentProvider as a consumer's engine would build it, the plugin entry the language host runs,
and `pip install .` into a fresh venv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
import venv
from pathlib import Path

import pytest
from pydantic import BaseModel

from convex_gcp import provider_host
from convex_gcp.package_args import ConvexOnGcpArgs, mirrored_types
from convex_gcp.settings import Settings
from tests.conftest import ROOT

TOKEN = "convex-gcp:index:ConvexOnGcp"
CONTRACT = json.loads((ROOT / "docs" / "outputs.json").read_text())


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


@pytest.fixture(scope="module")
def schema() -> dict:
    return provider_host.schema()


def _resolve(schema: dict, prop: dict) -> dict:
    ref = prop.get("$ref", "")
    return schema["types"][ref.split("#/types/")[1]] if ref.startswith("#/types/") else {}


def _config_keys(model: type[BaseModel], prefix: str = "") -> dict[str, bool]:
    """Every configuration key path of the model (aliases), and whether it is required."""
    keys = {}
    for name, info in model.model_fields.items():
        path = f"{prefix}{info.alias or name}"
        keys[path] = info.is_required()
        for arg in (info.annotation, *typing.get_args(info.annotation)):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                keys.update(_config_keys(arg, f"{path}."))
    return keys


def _schema_keys(schema: dict, properties: dict, required: list, prefix: str = "") -> dict[str, bool]:
    keys = {}
    for name, prop in properties.items():
        path = f"{prefix}{name}"
        keys[path] = name in required
        # An object, or a list of objects (domain.armor.rules): the keys inside either.
        nested = _resolve(schema, prop) or _resolve(schema, prop.get("items", {}))
        if nested:
            keys.update(_schema_keys(schema, nested.get("properties", {}), nested.get("required", []), f"{path}."))
    return keys


def test_schema_inputs_are_every_configuration_key(schema):
    resource = schema["resources"][TOKEN]
    assert resource["isComponent"] is True and schema["name"] == "convex-gcp"
    from_schema = _schema_keys(schema, resource["inputProperties"], resource.get("requiredInputs", []))
    from_config = _config_keys(Settings)
    from_config["stack"] = False  # defaults to the consumer's stack name
    assert from_schema == from_config
    assert set(resource["requiredInputs"]) == {"project", "region", "environment"}
    # Settings decide which resources exist: every input is plain, never an Output.
    assert all(prop.get("plain") for prop in resource["inputProperties"].values())
    assert resource["inputProperties"]["database"]["$ref"] == "#/types/convex-gcp:index:DatabaseArgs"
    assert resource["inputProperties"]["unprotect"]["items"]["type"] == "string"


def test_schema_outputs_are_the_outputs_contract_and_none_is_secret(schema):
    resource = schema["resources"][TOKEN]
    contract = {camel(name) for name in CONTRACT["outputs"]}
    assert set(resource["properties"]) == contract
    always = {camel(name) for name, spec in CONTRACT["outputs"].items() if spec["when"] == "always"}
    assert set(resource.get("required", [])) == always
    assert all(prop["type"] == "string" and prop.get("description") for prop in resource["properties"].values())
    # No output and no input is a secret value (docs/outputs.md): the schema marks none.
    assert '"secret"' not in json.dumps(schema)


def test_the_args_mirror_the_model():
    def check(model: type[BaseModel], args: type) -> None:
        fields = {f.name: f for f in __import__("dataclasses").fields(args)}
        assert set(fields) == set(model.model_fields), model.__name__
        for name, info in model.model_fields.items():
            assert camel(name) == (info.alias or name), f"{model.__name__}.{name}: the schema name would differ from the key"
            for arg in (info.annotation, *typing.get_args(info.annotation)):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    check(arg, mirrored_types()[arg.__name__.removesuffix("Settings") + "Args"])

    check(Settings, ConvexOnGcpArgs)


def _construct(inputs: dict, token: str = TOKEN):
    """Build the component through the SDK's ComponentProvider under the mocks, as the plugin does for a
    consumer's engine; return the state it sends back as {name: (value, secret)}, or the error."""
    code = f"""
import json, sys
import pulumi
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await
from pulumi.provider.experimental.component import ComponentProvider
from tools.mocks import GcpMocks
from convex_gcp import provider_host

pulumi.runtime.set_mocks(GcpMocks("proj-1", "us-central1"), project="consumer", stack="dev", preview=False)
provider = ComponentProvider(provider_host.components(), "convex-gcp", version="0.1.0")
result = {{}}
try:
    _sync_await(run_pulumi_func(lambda: result.update(r=provider.construct("convex", sys.argv[2], json.loads(sys.argv[1]), None))))
except Exception as error:
    print(json.dumps({{"error": str(error)}}))
    sys.exit(0)
state = {{}}
for key, value in result["r"].state.items():
    out = pulumi.Output.from_input(value)
    state[key] = [_sync_await(out.future()), _sync_await(out.is_secret())]
print(json.dumps({{"state": state}}))
"""
    from tests import runner

    done = runner.run_python(["-c", code, json.dumps(inputs), token], cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


DEV_INPUTS = {"project": "proj-1", "region": "us-central1", "environment": "dev",
              "database": {"tier": "db-g1-small", "backups": {"pointInTimeRecovery": False, "retainedBackups": 3}}}


def test_a_consumer_gets_the_contract_and_no_secret():
    result = _construct(DEV_INPUTS)
    state = result["state"]
    always = {camel(name) for name, spec in CONTRACT["outputs"].items() if spec["when"] == "always"}
    assert always <= set(state) and "frontDoorIp" not in state
    assert [key for key, (_, secret) in state.items() if secret] == []
    assert state["sqlConnectionName"][0] == "proj-1:us-central1:convex-dev-pg-a1b2"  # stack name: the consumer's
    assert state["connectionMode"][0] == "proxy" and state["convexUrl"][0] == "http://localhost:3210"


def test_a_consumer_gets_the_configurations_errors():
    bad = {**DEV_INPUTS, "database": {"tier": "db-f1-smal"}, "connectionMode": "proxi"}
    error = _construct(bad)["error"]
    assert "nothing was created" in error
    assert "convex-gcp:database.tier: unknown tier 'db-f1-smal' (did you mean 'db-g1-small'?)" in error
    assert "convex-gcp:connectionMode" in error and "proxy" in error


def test_the_plugin_entry_serves_the_schema(tmp_path):
    # What pulumi-language-python's RunPlugin does for a directory with __main__.py: `python <dir> <engine>`.
    import grpc
    from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

    process = subprocess.Popen([sys.executable, str(ROOT), "127.0.0.1:1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        port = int(process.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            served = provider_pb2_grpc.ResourceProviderStub(channel).GetSchema(provider_pb2.GetSchemaRequest(version=0), timeout=60)
        assert json.loads(served.schema) == provider_host.schema()
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
        process.stderr.close()


def test_plugin_yaml_and_version():
    assert (ROOT / "PulumiPlugin.yaml").read_text().count("runtime: python") == 1
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert provider_host.version() == project["version"]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{project['version']}]" in changelog, "CHANGELOG.md has a section for the version in pyproject.toml"
    requirements = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert sorted(project["dependencies"]) == sorted(requirements), "pyproject.toml's dependencies are requirements.txt's pins"


def _site_packages() -> str:
    import sysconfig

    return sysconfig.get_paths()["purelib"]


def test_pip_install_gives_an_importable_component(tmp_path):
    """`pip install .` into a fresh venv, offline: the wheel is built with this venv's setuptools and
    installed without its dependencies, which come from this venv's site-packages (put after the fresh
    venv's own). CI's workflow does the full `pip install .` with dependencies from scratch."""
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                            "-w", str(wheels), str(ROOT)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-3000:]
    [wheel] = wheels.glob("convex_gcp-*.whl")
    fresh = tmp_path / "fresh"
    venv.create(fresh, with_pip=False)
    python = fresh / "bin" / "python"
    target = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True).stdout.strip()
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", target, str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    probe = """
import json, sys
import components.convex_on_gcp as component
from convex_gcp import provider_host
from convex_gcp.runtime import COLLECTOR_CONFIG, HEALTH_DIR, UNIT_DIR, vm_dir
from convex_gcp import convex_env
from components.monitoring import DASHBOARD_LAYOUT
print(json.dumps({"env_table": convex_env.table()["commit"], "file": component.__file__, "startup": (vm_dir() / "startup.sh").stat().st_size,
                  "configs": sorted(p.name for p in vm_dir().glob("*.json")), "layout": DASHBOARD_LAYOUT.is_file() and COLLECTOR_CONFIG.is_file(),
                  "units": sorted(p.name for p in UNIT_DIR.iterdir()), "scripts": sorted(p.name for p in vm_dir().glob("*.sh")),
                  "health": sorted(p.name for p in HEALTH_DIR.iterdir()),
                  "schema": provider_host.schema()}))
"""
    env = {**os.environ, "PYTHONPATH": _site_packages()}  # the dependencies only: this venv has no project package
    env.pop("PYTHONSAFEPATH", None)
    done = subprocess.run([str(python), "-P", "-c", probe], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout)
    assert found["file"].startswith(str(fresh)), found["file"]
    assert found["startup"] == (ROOT / "vm" / "startup.sh").stat().st_size
    assert found["units"] == sorted(p.name for p in (ROOT / "vm" / "units").iterdir())  # every file under vm/ ships
    assert found["scripts"] == sorted(p.name for p in (ROOT / "vm").glob("*.sh"))
    assert found["health"] == sorted(p.name for p in (ROOT / "vm" / "health").iterdir())
    assert found["configs"] == sorted(p.name for p in (ROOT / "vm").glob("*.json")) and found["layout"]
    assert {p.name for p in (ROOT / "vm").iterdir()} == {*found["scripts"], *found["configs"], "units", "health"}
    assert found["schema"] == provider_host.schema()
    assert found["env_table"] == json.loads((ROOT / "convex_gcp" / "convex_env.json").read_text())["commit"]
    names = subprocess.run([sys.executable, "-m", "zipfile", "-l", str(wheel)], capture_output=True, text=True, check=True).stdout
    # Product code only: no tools, no tests.
    assert "tools/" not in names and "tests/" not in names and "convex_gcp/vm/startup.sh" in names


def test_ci_installs_the_package_from_scratch():
    import yaml

    steps = yaml.safe_load((ROOT / ".github/workflows/pull-request.yml").read_text())["jobs"]["test"]["steps"]
    [step] = [s for s in steps if "/tmp/pkg" in s.get("run", "")]
    script = step["run"]
    assert "python -m venv /tmp/pkg" in script and "-r requirements.lock" in script
    assert "cd /tmp && /tmp/pkg/bin/python -m convex_gcp.provider_host --schema" in script


def test_a_python_consumer_passes_typed_args():
    code = """
import pulumi
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await
from tools.mocks import GcpMocks
from components.convex_on_gcp import ConvexOnGcp
from convex_gcp.package_args import BackupArgs, ConvexOnGcpArgs, DatabaseArgs

pulumi.runtime.set_mocks(GcpMocks("proj-1", "us-central1"), project="consumer", stack="dev", preview=False)
args = ConvexOnGcpArgs(project="proj-1", region="us-central1", environment="dev", stack="team-a",
                       database=DatabaseArgs(tier="db-g1-small", backups=BackupArgs(point_in_time_recovery=False, retained_backups=3)))
out = {}
_sync_await(run_pulumi_func(lambda: out.update(c=ConvexOnGcp("convex", args))))
print(_sync_await(out["c"].vm_name.future()), _sync_await(out["c"].sql_connection_name.future()))
"""
    from tests import runner

    done = runner.run_python(["-c", code], cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["convex-team-a-vm", "proj-1:us-central1:convex-team-a-pg-a1b2"]


LOCAL = "convex-gcp:index:ConvexLocal"


def test_the_local_counterpart_mirrors_the_local_keys_and_its_postgres_url_is_the_secret(schema):
    from convex_gcp.settings import LocalStackSettings

    resource = schema["resources"][LOCAL]
    from_schema = _schema_keys(schema, resource["inputProperties"], resource.get("requiredInputs", []))
    from_config = {key: False for key in _config_keys(LocalStackSettings) if key.split(".")[0] in ("environment", "convex", "local")}
    from_config["stack"] = False
    assert from_schema == from_config
    local = CONTRACT["local"]
    assert set(resource["properties"]) == {camel(n) for n in [*local["subset"], *local["local_only"]]}
    # The same ConvexArgs type serves both components.
    assert resource["inputProperties"]["convex"]["$ref"] == schema["resources"][TOKEN]["inputProperties"]["convex"]["$ref"]
    state = _construct({"convex": {"instanceName": "convex-local"}}, LOCAL)["state"]
    secret = sorted(key for key, (_, is_secret) in state.items() if is_secret)
    expected = sorted(camel(name) for name, spec in local["local_only"].items() if spec["secret"])
    assert secret == expected == ["postgresUrl"]
    assert state["connectionMode"][0] == "plaintext" and state["convexUrl"][0] == "http://127.0.0.1:3210"
    assert "convex-gcp:convex.env.POSTGRES_URL" in _construct({"convex": {"env": {"POSTGRES_URL": "x"}}}, LOCAL)["error"]


def test_map_keys_are_data_and_field_names_are_keys():
    # The provider passes snake_case field names; a map's keys (flags, convex.env) must stay as written.
    from convex_gcp.package_args import to_config

    config, stack = to_config({"project": "p", "region": "r", "environment": "dev", "stack": "s",
                               "database": {"flags": {"log_min_duration_statement": "1s"}, "disk_size_gb": 20},
                               "convex": {"env": {"ISOLATE_V8_FLAGS": "x"}, "max_concurrent_queries": 3}})
    assert stack == "s" and config["gcp:project"] == "p"
    assert json.loads(config["convex-gcp:database"]) == {"flags": {"log_min_duration_statement": "1s"}, "diskSizeGb": 20}
    assert json.loads(config["convex-gcp:convex"]) == {"env": {"ISOLATE_V8_FLAGS": "x"}, "maxConcurrentQueries": 3}
