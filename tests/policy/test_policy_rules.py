"""The policy pack's rules against the offline plan of every stack (must pass) and against
deliberately broken copies of the same resources (must fail with the rule's message)."""

from __future__ import annotations

import copy
import re
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_plan
from policy import rules
from tools.plan import stack_config

STACKS = sorted(p.name.split(".")[1] for p in ROOT.glob("Pulumi.*.yaml"))


def environment(stack: str) -> str:
    return stack_config(stack).get("convex-gcp:environment", stack)


def plan_resources(stack: str) -> list[rules.Resource]:
    plan = run_plan(stack)
    assert not plan.error, plan.error
    return [rules.resource_from_plan(asdict(r), environment(stack)) for r in plan.resources if r.custom]


def one(stack: str, typ: str, name_contains: str = "") -> rules.Resource:
    found = [r for r in plan_resources(stack) if r.type == typ and name_contains in r.name]
    assert found, f"no {typ} ({name_contains}) in the {stack} plan"
    return copy.deepcopy(found[0])


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("rule", rules.RULES, ids=lambda r: r.name)
def test_every_rule_passes_on_every_stack(stack, rule):
    resources = plan_resources(stack)
    applicable = [r for r in resources if r.type in rule.types]
    # A rule that sees nothing proves nothing: each must have a resource to judge in every stack.
    assert applicable, f"rule {rule.name} applies to no resource of stack {stack}"
    violations = [m for r in applicable for m in rules.check(rule, r)]
    assert violations == []


@pytest.mark.parametrize("stack", STACKS)
def test_plan_images_are_seen_by_the_image_rule(stack):
    vm = one(stack, rules.INSTANCE)
    refs = [m.group(2) for v in vm.props["metadata"].values() if isinstance(v, str) for m in rules._IMAGE_LINE.finditer(v)]
    assert any("convex-backend" in ref for ref in refs), refs


# --------------------------------------------------------------------------- broken inputs


def _sql(stack="prod"):
    return one(stack, rules.SQL_INSTANCE)


def _vm(stack="prod"):
    return one(stack, rules.INSTANCE)


def _iap_firewall():
    return one("prod", rules.FIREWALL, "iap")


def _set(resource, dotted, value):
    target = resource.props
    *parents, last = dotted.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    if value is _DELETE:
        target.pop(last, None)
    else:
        target[last] = value
    return resource


_DELETE = object()


def _with_env_line(resource, key, pattern, replacement):
    resource.props["metadata"][key] = re.sub(pattern, replacement, resource.props["metadata"][key], flags=re.MULTILINE)
    return resource


def _add_env_line(resource, key, line):
    resource.props["metadata"][key] = resource.props["metadata"][key] + line + "\n"
    return resource


def _unprotected(resource):
    resource.protect = False
    return resource


def _labelled_prod(resource):
    resource.environment = ""
    resource.props["settings"]["userLabels"]["environment"] = "prod"
    resource.props["settings"]["backupConfiguration"]["pointInTimeRecoveryEnabled"] = False
    return resource


BROKEN = [
    ("cloudsql-no-public-ip", lambda: _set(_sql(), "settings.ipConfiguration.ipv4Enabled", True), "has a public IPv4 address"),
    ("cloudsql-no-public-ip", lambda: _set(_sql(), "settings.ipConfiguration.ipv4Enabled", _DELETE), "has a public IPv4 address"),
    ("cloudsql-tls-enforced", lambda: _set(_sql(), "settings.ipConfiguration.sslMode", "ALLOW_UNENCRYPTED_AND_ENCRYPTED"), "accepts unencrypted connections"),
    ("cloudsql-tls-enforced", lambda: _set(_sql("dev"), "settings.ipConfiguration.sslMode", _DELETE), "sslMode=unset"),
    ("prod-database-protected", lambda: _set(_sql(), "settings.deletionProtectionEnabled", False), "settings.deletionProtectionEnabled is not true"),
    ("prod-database-protected", lambda: _set(_sql(), "deletionProtection", False), "deletionProtection=false"),
    ("prod-database-protected", lambda: _unprotected(_sql()), "the Pulumi `protect` option is off"),
    ("prod-database-protected", lambda: _set(_sql(), "settings.backupConfiguration.enabled", False), "automated backups are off"),
    ("prod-database-protected", lambda: _set(_sql(), "settings.backupConfiguration.pointInTimeRecoveryEnabled", False), "point-in-time recovery is off"),
    ("prod-database-protected", lambda: _labelled_prod(_sql("dev")), "point-in-time recovery is off"),
    ("no-open-ssh", lambda: _set(_iap_firewall(), "sourceRanges", ["35.235.240.0/20", "0.0.0.0/0"]), "opens SSH (tcp/22) to 0.0.0.0/0"),
    ("no-open-ssh", lambda: _set(_set(_iap_firewall(), "sourceRanges", ["::/0"]), "allows", [{"protocol": "tcp", "ports": ["20-30"]}]), "opens SSH (tcp/22) to ::/0"),
    ("no-open-ssh", lambda: _set(_set(_iap_firewall(), "sourceRanges", ["0.0.0.0/0"]), "allows", [{"protocol": "all"}]), "opens SSH"),
    ("no-default-compute-sa", lambda: _set(_vm(), "serviceAccount.email", "123456-compute@developer.gserviceaccount.com"), "runs as the default compute service account"),
    ("no-default-compute-sa", lambda: _set(_vm(), "serviceAccount.email", _DELETE), "email unset"),
    ("no-deprecated-sql-scope", lambda: _set(_vm(), "serviceAccount.scopes", ["https://www.googleapis.com/auth/sqlservice"]), "deprecated Cloud SQL scope"),
    ("no-deprecated-sql-scope", lambda: _set(_vm("dev"), "serviceAccount.scopes", ["cloud-platform", "sql"]), "deprecated Cloud SQL scope sql"),
    ("images-pinned", lambda: _with_env_line(_vm(), "convex-gcp-config", r"^(BACKEND_IMAGE=[^:\n]+):\S+$", r"\1:latest"), "uses the moving tag :latest"),
    ("images-pinned", lambda: _with_env_line(_vm("dev"), "convex-gcp-config", r"^(PROXY_IMAGE=[^:\n]+):\S+$", r"\1"), "has no tag"),
    ("no-secret-literals-in-metadata", lambda: _add_env_line(_vm(), "convex-backend-env", "INSTANCE_SECRET=" + "ab" * 32), "sets INSTANCE_SECRET to a literal"),
    ("no-secret-literals-in-metadata", lambda: _add_env_line(_vm(), "convex-backend-env", "DATABASE_URL=postgresql://convex:hunter2@10.0.0.3:5432"), "a URL with an embedded password"),
    ("no-secret-literals-in-metadata", lambda: _set(_vm("dev"), "metadata.db-password", "hunter2hunter2"), "key 'db-password' looks like a secret value"),
    ("no-secret-literals-in-metadata", lambda: _set(_vm(), "metadata.sa-key", '{"type": "service_account", "private_key": "x"}'), "a service-account key"),
]


@pytest.mark.parametrize("rule_name,make,expected", BROKEN, ids=[f"{b[0]}-{i}" for i, b in enumerate(BROKEN)])
def test_broken_input_fails_with_the_rules_message(rule_name, make, expected):
    resource = make()
    rule = next(r for r in rules.RULES if r.name == rule_name)
    messages = rules.check(rule, resource)
    assert any(expected in m for m in messages), messages
    assert (rule_name, resource.name) in {(v[0], v[1]) for v in rules.evaluate([resource])}


def test_secret_marked_metadata_fails():
    vm = _vm()
    vm.secret_paths = ("metadata.convex-backend-env",)
    assert any("carries a Pulumi secret" in m for m in rules.no_secret_literals_in_metadata(vm))


def test_secret_references_are_allowed():
    vm = _vm()
    vm.props["metadata"]["convex-gcp-config"] += "EXTRA_SECRET_ID=projects/p/secrets/x\nAPI_TOKEN=\n"
    assert rules.no_secret_literals_in_metadata(vm) == []


def test_prod_rule_ignores_dev_databases():
    sql = _set(_sql("dev"), "settings.backupConfiguration.pointInTimeRecoveryEnabled", False)
    assert sql.environment == "dev"
    assert rules.prod_database_protected(sql) == []


def test_ssh_rule_leaves_other_open_ports_alone():
    api = _set(_set(_iap_firewall(), "sourceRanges", ["0.0.0.0/0"]), "allows", [{"protocol": "tcp", "ports": ["3210-3211"]}])
    assert rules.no_open_ssh(api) == []
    assert rules.no_open_ssh(_set(api, "direction", "EGRESS")) == []


def test_rule_names_are_unique_and_described():
    names = [r.name for r in rules.RULES]
    assert len(names) == len(set(names))
    assert all(r.description and r.remediation for r in rules.RULES)


def test_pack_config_files_name_each_stacks_environment():
    import json

    for stack in STACKS:
        config = json.loads((ROOT / "policy" / "config" / f"{stack}.json").read_text())
        assert config["all"] == "mandatory"
        assert config["prod-database-protected"]["environment"] == environment(stack)


def test_rules_module_imports_without_pulumi():
    source = Path(rules.__file__).read_text()
    assert not re.search(r"^\s*(import|from)\s+pulumi", source, re.MULTILINE)
