"""python -m tools.plan: --set like `pulumi config set [--path]`, no tracebacks, and an exit
status that says whether the configuration was valid in every output mode."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import ROOT, run_plan_with
from tests import runner
from tools.plan import UsageError, apply_set, parse_path, render_markdown, stack_config


def cli(*args: str) -> subprocess.CompletedProcess:
    # `python -m tools.plan …` in a fresh process, forked from tests.runner's warm server.
    return runner.run_python(["-m", "tools.plan", *args], cwd=ROOT, timeout=300)


@pytest.mark.parametrize(
    "args, message",
    [
        (["dev", "--set", "database.tier"], "'database.tier' is not KEY=VALUE, e.g. --set database.tier=db-custom-2-7680"),
        (["staging"], "no stack 'staging' (no Pulumi.staging.yaml); stacks: dev, local, prod"),
        (["dev", "--set", "database.tier.size=1"], "database.tier is not an object"),
        (["dev", "--set", "network.apiSourceRanges[3]=10.0.0.0/8"], "index 3 is beyond the end of a list of 0"),
        (["dev", "--set", "=x"], "'=x' is not KEY=VALUE"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args, message):
    result = cli(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and message in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("python -m tools.plan: error: ")


@pytest.mark.parametrize("mode", [[], ["--json"]], ids=["markdown", "json"])
def test_configuration_error_exits_1_in_every_mode(mode):
    result = cli("dev", "--set", "environment=production", *mode)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    text = json.loads(result.stdout)["error"] if mode else result.stdout
    assert "pulumi config set 'convex-gcp:environment' prod" in text


def test_set_path_changes_one_field_like_pulumi_config_set_path():
    config = stack_config("dev", {"database.tier": "db-custom-2-7680"})
    database = json.loads(config["convex-gcp:database"])
    dev = json.loads(stack_config("dev")["convex-gcp:database"])
    assert database == {**dev, "tier": "db-custom-2-7680"}
    # The namespace may be written out; a plain object key still replaces the whole object.
    assert stack_config("dev", {"convex-gcp:database.tier": "db-custom-2-7680"}) == config
    assert json.loads(stack_config("dev", {"convex-gcp:database": '{"tier": "db-f1-micro"}'})["convex-gcp:database"]) == {"tier": "db-f1-micro"}


def test_set_path_values_are_typed_as_pulumi_types_them():
    config: dict[str, str] = {}
    apply_set(config, "convex-gcp:vm.dataDiskSizeGb", "50")
    apply_set(config, "vm.deletionProtection", "true")
    apply_set(config, "vm.image", "0123")  # a leading 0 stays a string
    apply_set(config, "network.apiSourceRanges[0]", "10.0.0.0/8")  # the list's length: append
    apply_set(config, 'database.flags["cloudsql.iam_authentication"]', "on")
    assert json.loads(config["convex-gcp:vm"]) == {"dataDiskSizeGb": 50, "deletionProtection": True, "image": "0123"}
    assert json.loads(config["convex-gcp:network"]) == {"apiSourceRanges": ["10.0.0.0/8"]}
    assert json.loads(config["convex-gcp:database"]) == {"flags": {"cloudsql.iam_authentication": "on"}}
    apply_set(config, 'adopt["a:b"]', "x")  # a colon inside a quoted segment is not a namespace
    assert json.loads(config["convex-gcp:adopt"]) == {"a:b": "x"}


def test_parse_path():
    assert parse_path('database.flags["cloudsql.iam_authentication"]') == ["database", "flags", "cloudsql.iam_authentication"]
    assert parse_path("network.apiSourceRanges[1]") == ["network", "apiSourceRanges", 1]
    for bad in ("[0].x", "database..tier", 'a["b'):
        with pytest.raises(UsageError):
            parse_path(bad)


def test_set_path_reaches_the_program():
    plan = run_plan_with("dev", {"database.tier": "db-custom-2-7680", "database.flags.work_mem": "8MB"})
    settings = plan.one("gcp:sql/databaseInstance:DatabaseInstance").inputs["settings"]
    assert settings["tier"] == "db-custom-2-7680"
    # dev's other flags and fields are untouched: the object was not replaced.
    flags = {f["name"]: f["value"] for f in settings["databaseFlags"]}
    assert flags["work_mem"] == "8192" and "log_min_duration_statement" in flags
    assert settings["backupConfiguration"]["backupRetentionSettings"]["retainedBackups"] == 3


def test_numbers_render_as_declared(dev_plan):
    """The mock monitor carries numbers as doubles; plans show 16, not 16.0."""
    psa = dev_plan.by_name("network-psa-range")
    assert psa.inputs["prefixLength"] == 16 and isinstance(psa.inputs["prefixLength"], int)
    text = render_markdown(dev_plan)
    assert "`prefixLength`=16 " in text.replace("|", " ").replace("<br>", " ")
    assert ".0<br>" not in text and ".0 |" not in text


def test_a_tag_the_registry_lacks_fails_the_plan_in_one_line():
    # The digest lookup (convex_gcp/images.py) 404s like the registry; a preview fails, with no traceback here.
    result = cli("dev", "--set", "convex.proxyVersion=2.99.0")
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert "preview would fail: invoke of docker:index/getRegistryImage" in result.stdout


def test_placeholders_are_said_loudly(prod_plan, dev_plan):
    # Pulumi.prod.yaml ships example.com hosts and emails: the plan says it used stand-ins, at the top.
    assert prod_plan.placeholders == ["convex-gcp:domain", "convex-gcp:monitoring"]
    first = render_markdown(prod_plan).splitlines()[2]
    assert first.startswith("> **PLACEHOLDERS PLANNED, NOT YOUR VALUES: convex-gcp:domain, convex-gcp:monitoring")
    assert "`pulumi up` refuses example.com" in first
    assert dev_plan.placeholders == [] and "PLACEHOLDERS" not in render_markdown(dev_plan)


def test_placeholders_go_to_stderr_too():
    result = cli("prod", "--json")
    assert result.returncode == 0
    assert result.stderr.startswith("PLACEHOLDERS PLANNED, NOT YOUR VALUES")
    assert json.loads(result.stdout)["placeholders"] == ["convex-gcp:domain", "convex-gcp:monitoring"]


def test_own_values_are_not_placeholders():
    domain = json.loads(stack_config("prod")["convex-gcp:domain"])
    monitoring = json.loads(stack_config("prod")["convex-gcp:monitoring"])
    result = cli("prod", "--json", "--set", f"convex-gcp:domain={json.dumps(domain)}", "--set", f"convex-gcp:monitoring={json.dumps(monitoring)}")
    assert result.returncode == 0 and "PLACEHOLDERS" not in result.stderr
    assert json.loads(result.stdout)["placeholders"] == []
