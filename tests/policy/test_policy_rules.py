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
from tools.render_plans import gcp_stacks

# The pack guards the Google Cloud stacks; a local (Docker) stack declares none of their resources.
STACKS = gcp_stacks()


def environment(stack: str) -> str:
    return stack_config(stack).get("convex-gcp:environment", stack)


def pack_config(stack: str) -> dict:
    """policy/config/<stack>.json: what the workflows pass the pack (from the base branch)."""
    import json

    return json.loads((ROOT / "policy" / "config" / f"{stack}.json").read_text())


def plan_resources(stack: str) -> list[rules.Resource]:
    plan = run_plan(stack)
    assert not plan.error, plan.error
    config, env = pack_config(stack), environment(stack)  # each parsed once, not once per resource
    return [rules.resource_from_plan(asdict(r), env, config.get(_rule_of(r.type), {}))
            for r in plan.resources if r.custom]


def _rule_of(resource_type: str) -> str:
    # The only per-rule config a plan resource needs here is the firewall rule's port allowance.
    return "no-world-open-ports" if resource_type == rules.FIREWALL else ""


def one(stack: str, typ: str, name_contains: str = "") -> rules.Resource:
    found = [r for r in plan_resources(stack) if r.type == typ and name_contains in r.name]
    assert found, f"no {typ} ({name_contains}) in the {stack} plan"
    return copy.deepcopy(found[0])


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("rule", rules.RULES, ids=lambda r: r.name)
def test_every_rule_passes_on_every_stack(stack, rule):
    resources = plan_resources(stack)
    applicable = [r for r in resources if rule.applies(r.type)]
    # A rule that sees nothing proves nothing: each must have a resource to judge in every stack.
    assert applicable, f"rule {rule.name} applies to no resource of stack {stack}"
    violations = [m for r in applicable for m in rules.check(rule, r)]
    assert violations == []


@pytest.mark.parametrize("stack", STACKS)
def test_plan_images_are_seen_by_the_image_rule(stack):
    vm = one(stack, rules.INSTANCE_TEMPLATE)
    refs = [m.group(2) for v in vm.props["metadata"].values() if isinstance(v, str) for m in rules._IMAGE_LINE.finditer(v)]
    assert any("convex-backend" in ref for ref in refs), refs


# --------------------------------------------------------------------------- broken inputs


def _sql(stack="prod"):
    return one(stack, rules.SQL_INSTANCE)


def _vm(stack="prod"):
    return one(stack, rules.INSTANCE_TEMPLATE)


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


def _world(resource, ranges, allows=None):
    resource = _set(resource, "sourceRanges", ranges)
    return _set(resource, "allows", allows) if allows is not None else resource


def _meta(resource, key, value):
    resource.props["metadata"][key] = value
    return resource


def _iam(role):
    return rules.Resource(type="gcp:projects/iAMMember:IAMMember", name="grant", props={"role": role, "member": "user:a@example.com"})


def _secret_iam(role):
    return rules.Resource(type="gcp:secretmanager/secretIamMember:SecretIamMember", name="grant", props={"role": role})


def _policy(role):
    import json

    data = json.dumps({"bindings": [{"role": role, "members": ["user:a@example.com"]}]})
    return rules.Resource(type="gcp:projects/iAMPolicy:IAMPolicy", name="policy", props={"policyData": data})


def _with_access_config(resource):
    resource.props["networkInterfaces"][0]["accessConfigs"] = [{"networkTier": "PREMIUM"}]
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
    ("images-pinned", lambda: _with_env_line(_vm(), "convex-gcp-config", r"^(BACKEND_IMAGE=[^:@\n]+)[:@]\S+$", r"\1:latest"), "uses the moving tag :latest"),
    ("images-pinned", lambda: _with_env_line(_vm("dev"), "convex-gcp-config", r"^(PROXY_IMAGE=[^:@\n]+)[:@]\S+$", r"\1"), "has no tag"),
    ("no-secret-literals-in-metadata", lambda: _add_env_line(_vm(), "convex-backend-env", "INSTANCE_SECRET=" + "ab" * 32), "sets INSTANCE_SECRET to a literal"),
    ("no-secret-literals-in-metadata", lambda: _add_env_line(_vm(), "convex-backend-env", "DATABASE_URL=postgresql://convex:hunter2@10.0.0.3:5432"), "a URL with an embedded password"),
    ("no-secret-literals-in-metadata", lambda: _set(_vm("dev"), "metadata.db-password", "hunter2hunter2"), "key 'db-password' looks like a secret value"),
    ("no-secret-literals-in-metadata", lambda: _set(_vm(), "metadata.sa-key", '{"type": "service_account", "private_key": "x"}'), "a service-account key"),
    # The startup script is no exemption.
    ("no-secret-literals-in-metadata", lambda: _meta(_vm(), "startup-script", _vm().props["metadata"]["startup-script"] + "\nADMIN_KEY=convex-self-hosted|01abcdef\n"), "sets ADMIN_KEY to a literal"),
    ("no-secret-literals-in-metadata", lambda: _meta(_vm("dev"), "startup-script", "#!/bin/bash\nexport PGPASSWORD=hunter2hunter2\n"), "sets PGPASSWORD to a literal"),
    # Ranges that together cover the internet count as 0.0.0.0/0.
    ("no-open-ssh", lambda: _world(_iap_firewall(), ["0.0.0.0/1", "128.0.0.0/1"]), "opens SSH (tcp/22) to 0.0.0.0/1, 128.0.0.0/1"),
    ("no-open-ssh", lambda: _world(_iap_firewall(), [f"{i}.0.0.0/8" for i in range(1, 224) if i not in (10, 127)]), "opens SSH"),
    ("no-open-ssh", lambda: _world(_iap_firewall(), ["2000::/4", "3000::/4"]), "opens SSH (tcp/22) to 2000::/4, 3000::/4"),
    ("no-world-open-ports", lambda: _world(_iap_firewall(), ["0.0.0.0/0"], [{"protocol": "tcp", "ports": ["6791"]}]), "opens tcp:6791 to the internet"),
    ("no-world-open-ports", lambda: _world(_iap_firewall(), ["0.0.0.0/0"], [{"protocol": "tcp", "ports": ["3389"]}]), "opens tcp:3389"),
    ("no-world-open-ports", lambda: _world(_iap_firewall(), ["0.0.0.0/1", "128.0.0.0/1"], [{"protocol": "udp"}]), "opens udp:all"),
    ("no-world-open-ports", lambda: _world(_iap_firewall(), ["::/0"], [{"protocol": "all"}]), "opens all to the internet (::/0)"),
    ("no-world-open-ports", lambda: _world(_iap_firewall(), [], [{"protocol": "tcp", "ports": ["8080"]}]), "no source given"),
    # Prod's config allows no port, dev's allows the API only.
    ("no-world-open-ports", lambda: _world(_iap_firewall(), ["0.0.0.0/0"], [{"protocol": "tcp", "ports": ["3210", "3211"]}]), "opens tcp:3210"),
    ("no-world-open-ports", lambda: _world(_dev_firewall(), ["0.0.0.0/0"], [{"protocol": "tcp", "ports": ["3210-3300"]}]), "opens tcp:3210-3300"),
    ("no-serial-port", lambda: _meta(_vm(), "serial-port-enable", "TRUE"), "enables the interactive serial console"),
    ("no-serial-port", lambda: _meta(_vm("dev"), "serial-port-enable", "1"), "serial-port-enable=1"),
    ("oslogin-enabled", lambda: _meta(_vm(), "enable-oslogin", "FALSE"), "turns OS Login off"),
    ("oslogin-enabled", lambda: _set(_vm("dev"), "metadata.enable-oslogin", _DELETE), "does not set enable-oslogin=TRUE"),
    ("no-external-ip-in-prod", lambda: _with_access_config(_vm()), "has an external IP"),
    ("no-primitive-roles", lambda: _iam("roles/editor"), "primitive role roles/editor"),
    ("no-primitive-roles", lambda: _iam("roles/owner"), "primitive role roles/owner"),
    ("no-primitive-roles", lambda: _secret_iam("roles/viewer"), "primitive role roles/viewer"),
    ("no-primitive-roles", lambda: _policy("roles/owner"), "primitive role roles/owner"),
]


def _dev_firewall():
    return one("dev", rules.FIREWALL, "iap")


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


def test_dev_config_allows_only_the_convex_api_ports_to_the_world():
    api = _world(_dev_firewall(), ["0.0.0.0/0"], [{"protocol": "tcp", "ports": ["3210", "3211"]}])
    assert api.config == {"allowedTcpPorts": [3210, 3211]}
    assert rules.no_world_open_ports(api) == []
    # Private, IAP and front-door ranges are not the internet, even together.
    inside = _world(_iap_firewall(), ["10.0.0.0/8", "35.235.240.0/20", "130.211.0.0/22", "35.191.0.0/16"], [{"protocol": "all"}])
    assert rules.no_world_open_ports(inside) == []
    # One public /8 missing: not the whole internet.
    almost = _world(_iap_firewall(), [f"{i}.0.0.0/8" for i in range(2, 224)], [{"protocol": "tcp", "ports": ["22"]}])
    assert rules.no_world_open_ports(almost) == [] and rules.no_open_ssh(almost) == []


def test_external_ips_are_fine_in_dev_and_secret_references_in_scripts():
    # Dev has no external IP either now (issue 26); one added there is still not the prod rule's business.
    assert not _vm("dev").props["networkInterfaces"][0].get("accessConfigs")
    assert rules.no_external_ip_in_prod(_with_access_config(_vm("dev"))) == []
    vm = _meta(_vm("dev"), "startup-script", 'ADMIN_KEY="$(gcloud secrets versions access latest --secret x)"\nTOKEN=$(curl -s x)\n')
    assert rules.no_secret_literals_in_metadata(vm) == []


def test_predefined_roles_pass_the_primitive_role_rule():
    assert rules.check(next(r for r in rules.RULES if r.name == "no-primitive-roles"), _iam("roles/cloudsql.client")) == []
    assert rules.check(next(r for r in rules.RULES if r.name == "no-primitive-roles"), _iam("roles/viewer")) != []


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
        assert config["no-external-ip-in-prod"]["environment"] == environment(stack)
        # Prod opens nothing to the world; dev at most the Convex API (network.publicHttpWithoutTls).
        assert set(config["no-world-open-ports"]["allowedTcpPorts"]) <= ({3210, 3211} if environment(stack) == "dev" else set())


def test_rules_module_imports_without_pulumi():
    source = Path(rules.__file__).read_text()
    assert not re.search(r"^\s*(import|from)\s+pulumi", source, re.MULTILINE)
