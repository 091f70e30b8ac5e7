"""Whole-program tests: __main__.py runs per stack file under the SDK's mocks; assertions
are on the inputs each resource was declared with."""

from __future__ import annotations

import json
import re

import pytest

from convex_gcp import db_grants
from tests.conftest import run_plan, run_plan_with, stack_object
from tools.mocks import EXTERNAL_IP, SECRET_SENTINELS

SQL = "gcp:sql/databaseInstance:DatabaseInstance"
# The VM's settings live in its instance template; the group's per-instance config names the VM.
VM = "gcp:compute/instanceTemplate:InstanceTemplate"
VM_CONFIG = "gcp:compute/perInstanceConfig:PerInstanceConfig"
CONTRACT = [
    "convex_url", "convex_site_url", "dashboard_url", "admin_key_secret", "sql_instance_name", "sql_connection_name",
    "sql_private_ip", "database_name", "database_user", "vm_name", "vm_zone", "vm_internal_ip", "vm_group", "vm_service_account",
    "network", "subnetwork", "peering_range", "connection_mode",
]


def env_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def metadata(plan) -> dict[str, str]:
    return plan.one(VM).inputs["metadata"]


@pytest.fixture(params=["dev", "prod"])
def plan(request):
    return run_plan(request.param)


def test_sql_is_private_ip_only_and_tls_enforced(plan):
    settings = plan.one(SQL).inputs["settings"]
    ip = settings["ipConfiguration"]
    assert ip["ipv4Enabled"] is False
    assert ip["privateNetwork"] == f"projects/example-convex-{plan.stack}/global/networks/convex-{plan.stack}-vpc"
    assert ip["sslMode"] == "TRUSTED_CLIENT_CERTIFICATE_REQUIRED"
    assert settings["connectorEnforcement"] == "REQUIRED"
    assert "authorizedNetworks" not in ip


def test_sql_depends_explicitly_on_the_peering(plan):
    instance = plan.one(SQL)
    connection = plan.one("gcp:servicenetworking/connection:Connection")
    assert connection.urn in instance.dependencies


def test_psa_range_and_connection(plan):
    # prod also has the front door's external global address.
    address = plan.by_name("network-psa-range").inputs
    assert (address["purpose"], address["addressType"], address["prefixLength"]) == ("VPC_PEERING", "INTERNAL", 16)
    connection = plan.one("gcp:servicenetworking/connection:Connection").inputs
    assert connection["service"] == "servicenetworking.googleapis.com"
    assert connection["reservedPeeringRanges"] == [address["name"]]


def test_peering_deletion_policy_per_environment(dev_plan, prod_plan):
    conn = "gcp:servicenetworking/connection:Connection"
    assert dev_plan.one(conn).inputs["deletionPolicy"] == "REMOVE_PEERING"
    assert prod_plan.one(conn).inputs["deletionPolicy"] == "ABANDON"


def test_sql_zone_edition_and_explicit_settings(plan):
    inputs = plan.one(SQL).inputs
    vm = plan.one(VM_CONFIG).inputs
    assert inputs["settings"]["locationPreference"]["zone"] == vm["zone"]
    assert inputs["settings"]["edition"] == "ENTERPRISE"
    assert inputs["databaseVersion"] == "POSTGRES_17"
    assert inputs["settings"]["diskAutoresize"] is True
    assert "settings.diskSize" in plan.one(SQL).ignore_changes


def test_dev_sql(dev_plan):
    inputs = dev_plan.one(SQL).inputs
    assert inputs["settings"]["tier"] == "db-g1-small"
    assert inputs["settings"]["availabilityType"] == "ZONAL"
    assert inputs["deletionProtection"] is False
    assert dev_plan.one(SQL).protect is True  # the engine refuses to lose it in dev too
    assert {f["name"]: f["value"] for f in inputs["settings"]["databaseFlags"]} == {
        "log_lock_waits": "on", "log_min_duration_statement": "1000", "cloudsql.iam_authentication": "on"}


def test_prod_sql_is_protected_three_ways_with_pitr(prod_plan):
    sql = prod_plan.one(SQL)
    settings = sql.inputs["settings"]
    assert sql.protect is True
    assert sql.inputs["deletionProtection"] is True
    assert settings["deletionProtectionEnabled"] is True
    assert settings["availabilityType"] == "REGIONAL"
    assert settings["tier"].startswith("db-custom-")
    backups = settings["backupConfiguration"]
    assert backups["enabled"] and backups["pointInTimeRecoveryEnabled"]
    assert settings["maintenanceWindow"] == {"day": 7, "hour": 18, "updateTrack": "stable"}
    flags = {f["name"]: f["value"] for f in settings["databaseFlags"]}
    assert flags["shared_buffers"] == "327680"  # 2560MB in 8 kB blocks
    assert flags["cloudsql.iam_authentication"] == "on"


def test_instance_secret_cannot_be_deleted_in_any_stack(prod_plan, dev_plan):
    """Convex data is tied to INSTANCE_SECRET, which lives only in Secret Manager."""
    for plan in (prod_plan, dev_plan):
        secret = plan.by_name("identity-instance-secret")
        assert secret.protect is True and secret.inputs["deletionProtection"] is True, plan.stack


def test_vm_boots_after_its_secret_grants(plan):
    grants = plan.of_type("gcp:secretmanager/secretIamMember:SecretIamMember")
    for vm in (plan.one(VM), plan.one(VM_CONFIG)):
        assert grants and all(g.urn in vm.dependencies for g in grants)


def test_data_disk_protected_in_every_stack(prod_plan, dev_plan):
    # The engine refuses to delete or replace it; docs/runbooks.md, "Replace the data disk", is the way out.
    assert prod_plan.by_name("convex-data").protect is True
    assert dev_plan.by_name("convex-data").protect is True
    # The deliberate way out lifts exactly the disk's protect (docs/runbooks.md).
    lifted = run_plan("dev", **{"convex-gcp:unprotect": json.dumps(["dataDisk"])})
    assert lifted.by_name("convex-data").protect is False
    assert lifted.one("gcp:sql/databaseInstance:DatabaseInstance").protect is True


def test_database_named_from_instance_name(plan):
    db = plan.one("gcp:sql/database:Database").inputs
    instance_name = stack_object(plan.stack, "convex")["instanceName"]
    assert db["name"] == instance_name.replace("-", "_")
    assert plan.outputs["database_name"]["value"] == db["name"]


def test_sql_instance_name_survives_reuse_rule(plan):
    name = plan.one(SQL).inputs["name"]
    assert name.startswith(f"convex-{plan.stack}-pg-") and name != f"convex-{plan.stack}-pg-"
    assert plan.one("random:index/randomId:RandomId")


def test_iam_users_in_every_stack_and_the_convex_role_holds_no_database_role(plan):
    """The Convex role: no database role at all (its grants come from the VM, convex_gcp/db_grants.py).
    The grant account: the only user in cloudsqlsuperuser. No password anywhere."""
    project = f"example-convex-{plan.stack}"
    users = sorted(({k: u.inputs.get(k) for k in ("name", "type", "databaseRoles", "deletionPolicy")}
                    for u in plan.of_type("gcp:sql/user:User")), key=lambda u: u["name"])
    assert users == [
        {"name": f"convex-{plan.stack}-sqlgrant@{project}.iam", "type": "CLOUD_IAM_SERVICE_ACCOUNT",
         "databaseRoles": ["cloudsqlsuperuser"], "deletionPolicy": "ABANDON"},
        {"name": f"convex-{plan.stack}-vm@{project}.iam", "type": "CLOUD_IAM_SERVICE_ACCOUNT",
         "databaseRoles": [], "deletionPolicy": "ABANDON"},
    ]
    config = env_lines(metadata(plan)["convex-gcp-config"])
    assert "--auto-iam-authn" in config["PROXY_ARGS"].split()
    assert config["DB_PASSWORD_SECRET_ID"] == ""
    assert config["DB_GRANT_ACCOUNT"] == f"convex-{plan.stack}-sqlgrant@{project}.iam.gserviceaccount.com"
    assert not plan.of_type("random:index/randomPassword:RandomPassword")
    assert plan.one(SQL).inputs["settings"]["dataApiAccess"] == "ALLOW_DATA_API"
    # What the VM sends through the Data API: exactly the grants, for the Convex role, in Convex's database.
    body = json.loads(metadata(plan)["convex-gcp-db-grants"])
    assert body == {"autoIamAuthn": True, "database": f"convex_{plan.stack}",
                    "sqlStatement": db_grants.grant_sql(f"convex-{plan.stack}-vm@{project}.iam", f"convex_{plan.stack}")}


def test_password_login_is_still_possible_in_dev_with_its_password_in_secret_places():
    plan = run_plan_with("dev", {"convex-gcp:iamAuth": "false"})
    user = plan.one("gcp:sql/user:User")
    assert user.inputs["type"] == "BUILT_IN"
    assert "password" in user.secret_inputs
    config = env_lines(metadata(plan)["convex-gcp-config"])
    assert config["DB_PASSWORD_SECRET_ID"].endswith("/secrets/convex-dev-db-password")
    assert "--auto-iam-authn" not in config["PROXY_ARGS"] and "DB_GRANT_ACCOUNT" not in config


def test_dedicated_service_account_and_roles(plan):
    """Every project binding whole: role, member and condition (tests/test_security_assertions.py tries
    hostile variants of the same comparison)."""
    vm_sa = plan.by_name("identity-vm-sa").inputs
    assert sorted(map(canonical, project_bindings(plan))) == sorted(map(canonical, expected_project_bindings(plan.stack)))
    vm = plan.one(VM).inputs
    assert vm["serviceAccount"]["email"].startswith(vm_sa["accountId"] + "@")
    assert "-compute@developer.gserviceaccount.com" not in json.dumps(vm)


def test_secret_access_is_per_secret(plan):
    grants = {(m.inputs["secretId"].rsplit("/", 1)[-1], m.inputs["role"]) for m in plan.of_type("gcp:secretmanager/secretIamMember:SecretIamMember")}
    prefix = f"convex-{plan.stack}"
    assert grants == {
        (f"{prefix}-instance-secret", "roles/secretmanager.secretAccessor"),
        (f"{prefix}-instance-secret", "roles/secretmanager.secretVersionAdder"),  # generated on the VM
        (f"{prefix}-admin-key", "roles/secretmanager.secretAccessor"),
        (f"{prefix}-admin-key", "roles/secretmanager.secretVersionAdder"),
    }
    members = {m.inputs["member"] for m in plan.of_type("gcp:secretmanager/secretIamMember:SecretIamMember")}
    assert len(members) == 1 and members.pop().startswith(f"serviceAccount:{prefix}-vm@")


def test_vm_scopes_shielded_oslogin(plan):
    vm = plan.one(VM).inputs
    scopes = vm["serviceAccount"]["scopes"]
    assert "https://www.googleapis.com/auth/sqlservice.admin" in scopes
    assert "https://www.googleapis.com/auth/cloud-platform" in scopes  # Secret Manager accepts no narrower scope
    assert "https://www.googleapis.com/auth/sqlservice" not in scopes
    assert vm["shieldedInstanceConfig"] == {"enableIntegrityMonitoring": True, "enableSecureBoot": True, "enableVtpm": True}
    assert metadata(plan)["enable-oslogin"] == "TRUE"
    # One exact COS build, pinned in the repo (tests/test_engine.py).
    assert vm["disks"][0]["sourceImage"].startswith("projects/cos-cloud/global/images/cos-")
    assert metadata(plan)["serial-port-enable"] == "FALSE"
    assert plan.one(VM_CONFIG).inputs["zone"] == plan.one(SQL).inputs["settings"]["locationPreference"]["zone"]


def test_vm_has_no_external_ip_and_a_separate_data_disk(plan):
    vm = plan.one(VM).inputs
    # Neither behind the front door (prod) nor in dev without a domain: clients come through the load
    # balancer or an IAP tunnel (convex_url is the tunnel's local end, docs/delivery.md), pulls through NAT.
    assert not vm["networkInterfaces"][0].get("accessConfigs")
    assert not [a for a in plan.of_type("gcp:compute/address:Address") if a.inputs["addressType"] == "EXTERNAL"]
    if "front_door_ip" not in plan.outputs:
        assert plan.outputs["convex_url"]["value"] == "http://localhost:3210"
    disk = plan.by_name("convex-data")
    assert vm["disks"][1]["source"] == disk.inputs["name"]
    assert plan.one(VM_CONFIG).inputs["preservedState"]["disks"][0]["source"].endswith(f"/disks/{disk.inputs['name']}")


def test_public_http_keeps_a_static_external_ip():
    network = {**stack_object("dev", "network"), "publicHttpWithoutTls": True, "apiSourceRanges": ["203.0.113.0/24"]}
    plan = run_plan("dev", **{"convex-gcp:network": json.dumps(network)})
    (address,) = [a for a in plan.of_type("gcp:compute/address:Address") if a.inputs["addressType"] == "EXTERNAL"]
    assert plan.one(VM).inputs["networkInterfaces"][0]["accessConfigs"] == [{"networkTier": "PREMIUM"}]
    (external,) = plan.one(VM_CONFIG).inputs["preservedState"]["externalIps"]
    assert external["autoDelete"] == "NEVER" and external["ipAddress"]["address"].endswith(f"/addresses/{address.inputs['name']}")
    assert plan.outputs["convex_url"]["value"] == f"http://{EXTERNAL_IP}:3210"


def test_vm_boots_after_its_roles(plan):
    # In proxy mode not after the database: tests/test_critical_path.py.
    needed = plan.of_type("gcp:projects/iAMMember:IAMMember")
    for vm in (plan.one(VM), plan.one(VM_CONFIG)):
        assert needed and all(r.urn in vm.dependencies for r in needed)


def test_startup_script_is_the_static_file(plan):
    from pathlib import Path

    script = (Path(__file__).resolve().parent.parent / "vm" / "startup.sh").read_text()
    assert metadata(plan)["startup-script"] == script
    assert "metadataStartupScript" not in plan.one(VM).inputs  # that field would replace the VM on change


def test_proxy_settings_rendered(plan):
    config = env_lines(metadata(plan)["convex-gcp-config"])
    args = config["PROXY_ARGS"].split()
    connection_name = plan.outputs["sql_connection_name"]["value"]
    assert args[-1] == connection_name
    assert {"--private-ip", "--address=0.0.0.0", "--port=5432", "--health-check", "--http-address=0.0.0.0", "--http-port=9090"} <= set(args)
    # Pulled by the digest its pinned tag resolved to at preview (tests/test_pins.py).
    image, digest = config["PROXY_IMAGE"].split("@")
    assert image == "gcr.io/cloud-sql-connectors/cloud-sql-proxy" and re.fullmatch(r"sha256:[0-9a-f]{64}", digest)


def test_convex_settings_rendered(plan):
    env = env_lines(metadata(plan)["convex-backend-env"])
    config = env_lines(metadata(plan)["convex-gcp-config"])
    convex = stack_object(plan.stack, "convex")
    assert env["INSTANCE_NAME"] == convex["instanceName"]
    assert env["CONVEX_CLOUD_ORIGIN"] == plan.outputs["convex_url"]["value"]
    assert env["CONVEX_SITE_ORIGIN"] == plan.outputs["convex_site_url"]["value"]
    url = env["POSTGRES_URL"]
    assert url.startswith("postgresql://") and "@172.30.250.34:5432?" in url
    assert "sslmode=disable" in url
    assert url.split("?")[0].count("/") == 2, "no database path in POSTGRES_URL"
    assert ":" not in url.split("//")[1].split("@")[0], "no password in metadata"
    assert env["DO_NOT_REQUIRE_SSL"] == "1"
    assert int(env["POSTGRES_MAX_CONNECTIONS"]) >= 4
    assert "INSTANCE_SECRET" not in env
    assert config["BACKEND_IMAGE"].startswith("ghcr.io/get-convex/convex-backend@sha256:")
    assert config["DASHBOARD_IMAGE"].startswith("ghcr.io/get-convex/convex-dashboard@sha256:")
    assert config["INSTANCE_SECRET_ID"].startswith("projects/")
    assert env_lines(metadata(plan)["convex-dashboard-env"]) == {"NEXT_PUBLIC_DEPLOYMENT_URL": plan.outputs["convex_url"]["value"]}


def test_pool_size_reaches_convex():
    plan = run_plan("dev", **{"convex-gcp:convex": json.dumps({**stack_object("dev", "convex"), "poolSize": 12})})
    assert env_lines(metadata(plan)["convex-backend-env"])["POSTGRES_MAX_CONNECTIONS"] == "12"


def test_no_image_is_unpinned(plan):
    config = env_lines(metadata(plan)["convex-gcp-config"])
    for key in ("PROXY_IMAGE", "BACKEND_IMAGE", "DASHBOARD_IMAGE"):
        assert ":" in config[key] and not config[key].endswith(":latest")


def test_outputs_contract(plan):
    # front_door_ip exists only with convex-gcp:domain (always in prod); the dashboard with monitoring (prod's default);
    # exports_bucket with exports (both).
    assert set(plan.outputs) == set(CONTRACT) | {"exports_bucket"} | ({"front_door_ip", "monitoring_dashboard_url"} if plan.stack == "prod" else set())
    assert plan.outputs["connection_mode"]["value"] == "proxy"
    assert plan.outputs["admin_key_secret"]["value"] == f"projects/example-convex-{plan.stack}/secrets/convex-{plan.stack}-admin-key"
    assert plan.outputs["vm_zone"]["value"] == plan.one(VM_CONFIG).inputs["zone"]
    assert plan.outputs["vm_name"]["value"] == plan.one(VM_CONFIG).inputs["name"] == f"convex-{plan.stack}-vm"
    assert plan.outputs["vm_group"]["value"] == f"convex-{plan.stack}-vm-group"


def test_dashboard_output_only_when_enabled():
    plan = run_plan("dev", **{"convex-gcp:convex": json.dumps({**stack_object("dev", "convex"), "dashboard": False})})
    assert "dashboard_url" not in plan.outputs
    assert "convex-dashboard-env" not in metadata(plan)
    assert env_lines(metadata(plan)["convex-gcp-config"])["DASHBOARD_ENABLED"] == "false"
    iap = next(r.inputs for r in plan.of_type("gcp:compute/firewall:Firewall") if r.inputs["name"].endswith("-allow-iap"))
    assert iap["allows"] == [{"ports": ["22", "3210", "3211"], "protocol": "tcp"}]  # no dashboard port without a dashboard


def test_no_plaintext_secret_anywhere(plan):
    """Generated secrets may only be inputs marked secret; never metadata, names or outputs."""
    for resource in plan.resources:
        for path in paths_holding(resource.inputs, tuple(SECRET_SENTINELS.values())):
            assert path in resource.secret_inputs, f"{resource.name}.{path} holds a generated secret in plaintext"
            assert resource.type in ("gcp:secretmanager/secretVersion:SecretVersion", "gcp:sql/user:User"), resource.name
    for name, output in plan.outputs.items():
        for sentinel in SECRET_SENTINELS.values():
            assert sentinel not in json.dumps(output["value"]), name
    secret_versions = plan.of_type("gcp:secretmanager/secretVersion:SecretVersion")
    assert all("secretData" in v.secret_inputs for v in secret_versions)


def test_no_stack_state_holds_a_generated_secret(prod_plan, dev_plan):
    """INSTANCE_SECRET is generated on the VM and every stack logs in through IAM: nothing to leak from
    state, which dev's previewer (any branch) can decrypt."""
    generated = ("random:index/randomBytes:RandomBytes", "random:index/randomPassword:RandomPassword",
                 "gcp:secretmanager/secretVersion:SecretVersion")
    for plan in (prod_plan, dev_plan):
        assert not [r.name for r in plan.resources if r.type in generated], plan.stack


def canonical(value) -> str:
    return json.dumps(value, sort_keys=True)


def project_bindings(plan) -> list[dict]:
    return [{"role": m.inputs["role"], "member": m.inputs["member"], "condition": m.inputs.get("condition")}
            for m in plan.of_type("gcp:projects/iAMMember:IAMMember")]


def expected_project_bindings(stack: str) -> list[dict]:
    """The whole set: logs and metrics project-wide; Cloud SQL roles on the one instance."""
    project = f"example-convex-{stack}"
    vm, grant = (f"serviceAccount:convex-{stack}-{a}@{project}.iam.gserviceaccount.com" for a in ("vm", "sqlgrant"))
    on_instance = {"title": "convex-sql-instance", "description": "This Cloud SQL instance only",
                   "expression": f"resource.name == 'projects/{project}/instances/convex-{stack}-pg-a1b2' && "
                                 "resource.type == 'sqladmin.googleapis.com/Instance'"}
    return [
        {"role": "roles/logging.logWriter", "member": vm, "condition": None},
        {"role": "roles/monitoring.metricWriter", "member": vm, "condition": None},
        {"role": "roles/cloudsql.client", "member": vm, "condition": on_instance},
        {"role": "roles/cloudsql.instanceUser", "member": vm, "condition": on_instance},
        {"role": "roles/cloudsql.instanceUser", "member": grant, "condition": on_instance},
    ]


def paths_holding(value, needles, path=""):
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in paths_holding(v, needles, f"{path}.{k}" if path else k)]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in paths_holding(v, needles, f"{path}[{i}]")]
    return [path] if isinstance(value, str) and any(n in value for n in needles) else []


def test_secret_detector_finds_a_leak():
    leaky = {"metadata": {"convex-backend-env": "POSTGRES_URL=postgresql://convex:" + SECRET_SENTINELS["random:index/randomPassword:RandomPassword"] + "@db"}}
    assert paths_holding(leaky, tuple(SECRET_SENTINELS.values())) == ["metadata.convex-backend-env"]


def test_apis_enabled_and_kept_on_destroy(plan):
    services = {s.inputs["service"]: s.inputs for s in plan.of_type("gcp:projects/service:Service")}
    for api in ("compute", "sqladmin", "servicenetworking", "iam", "secretmanager"):
        assert services[f"{api}.googleapis.com"]["disableOnDestroy"] is False
    network = plan.one("gcp:compute/network:Network")
    wait = plan.by_name("apis-propagated")
    assert set(s.urn for s in plan.of_type("gcp:projects/service:Service")) <= set(wait.dependencies)
    assert wait.urn in network.dependencies


def test_network_nat_private_access_and_firewalls(dev_plan):
    subnet = dev_plan.one("gcp:compute/subnetwork:Subnetwork").inputs
    assert subnet["privateIpGoogleAccess"] is True
    assert dev_plan.one("gcp:compute/network:Network").inputs["autoCreateSubnetworks"] is False
    nat = dev_plan.one("gcp:compute/routerNat:RouterNat").inputs
    assert nat["natIpAllocateOption"] == "AUTO_ONLY"
    rules = {r.inputs["name"]: r.inputs for r in dev_plan.of_type("gcp:compute/firewall:Firewall")}
    assert rules["convex-dev-allow-iap"]["sourceRanges"] == ["35.235.240.0/20"]
    # No domain: the API is reached through the IAP tunnel, not opened to the internet.
    assert "convex-dev-allow-api" not in rules
    assert rules["convex-dev-allow-iap"]["allows"] == [{"ports": ["22", "3210", "3211", "6791"], "protocol": "tcp"}]
    for rule in rules.values():
        assert rule["targetTags"] == ["convex-backend"]
        if "22" in rule["allows"][0]["ports"]:
            assert "0.0.0.0/0" not in rule["sourceRanges"]
    assert "convex-dev-allow-dashboard" not in rules  # no ranges configured: IAP only


def test_existing_network_is_looked_up_not_created():
    plan = run_plan_with("dev", {"convex-gcp:network": json.dumps({"existingNetwork": "default"})})
    assert not plan.of_type("gcp:compute/network:Network")
    assert plan.outputs["network"]["value"] == "default"
    assert plan.one("gcp:servicenetworking/connection:Connection").inputs["deletionPolicy"] == "ABANDON"


def test_bad_config_fails_before_anything_is_declared():
    plan = run_plan_with("dev", {"convex-gcp:database": json.dumps({**stack_object("dev", "database"), "tier": "db-n1-standard-1"})})
    assert "convex-gcp:database.tier" in plan.error
    # MySQL's db-n1-standard-1 (1 vCPU, 3.75 GB) is PostgreSQL's db-custom-1-3840.
    assert "pulumi config set --path 'convex-gcp:database.tier' db-custom-1-3840" in plan.error
    assert "Traceback" not in plan.error
    assert not [r for r in plan.resources if r.custom]


def test_plan_markdown_renders(dev_plan):
    from tools.plan import render_markdown

    text = render_markdown(dev_plan)
    assert "## VM runtime settings" in text and "PROXY_ARGS=" in text and "[secret]" not in text.split("## Outputs")[1]


def _needs_all_apis(plan, resource, services, memo):
    """Whether a resource waits, directly or through what it depends on, for every enabled API."""
    if resource.urn in memo:
        return memo[resource.urn]
    memo[resource.urn] = set()
    by_urn = {r.urn: r for r in plan.resources}
    reached = {u for u in resource.dependencies if u in services}
    for urn in resource.dependencies:
        if urn in by_urn and urn not in services:
            reached |= _needs_all_apis(plan, by_urn[urn], services, memo)
    memo[resource.urn] = reached
    return reached


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_every_google_resource_waits_for_the_apis(stack):
    """Resources are created only after the APIs they need are enabled, on a fresh project too."""
    plan = run_plan(stack)
    services = {s.urn for s in plan.of_type("gcp:projects/service:Service")}
    memo: dict = {}
    missing = [
        r.name for r in plan.resources
        if r.custom and r.type.startswith("gcp:") and r.type != "gcp:projects/service:Service"
        and _needs_all_apis(plan, r, services, memo) != services
    ]
    assert not missing, f"declared without waiting for the project APIs: {missing}"


TOP = "convex-gcp:index:ConvexOnGcp"


def test_top_level_component_keeps_every_urn_of_a_stack_built_before_it(plan):
    """Everything moved under ConvexOnGcp: each direct child carries an alias to the stack's root, and the
    engine derives its children's old URNs from it (pulumi/pulumi pkg/resource/deploy/step_generator.go,
    generateAliases: "multiply out any aliases our parent had"),
    so an existing stack's preview shows no replacement. The old URN is the new one without the top type."""
    top = plan.one(TOP)
    by_urn = {r.urn: r for r in plan.resources}
    for resource in plan.resources:
        if resource is top:
            continue
        ancestor = resource
        while ancestor.parent != top.urn:
            assert ancestor.parent in by_urn, f"{resource.urn} is not under {TOP}"
            ancestor = by_urn[ancestor.parent]
        assert {"noParent": True} in ancestor.aliases, f"{ancestor.urn} lost its URN from before {TOP}"
        old_urn = resource.urn.replace(f"::{TOP}$", "::", 1)
        assert TOP not in old_urn and old_urn.count("::") == resource.urn.count("::")
