"""Whole-program plans of the dev stack in each connectionMode (overridden in the test): the SQL
instance's TLS settings, the private DNS name, the Convex environment and where secrets may go."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_plan, run_plan_with
from tests.test_program import paths_holding
from tools.mocks import SECRET_SENTINELS, SQL_DNS_UID, SQL_PRIVATE_IP

SQL = "gcp:sql/databaseInstance:DatabaseInstance"
VM = "gcp:compute/instanceTemplate:InstanceTemplate"  # the VM's metadata and boot dependencies
ZONE = "gcp:dns/managedZone:ManagedZone"
RECORD = "gcp:dns/recordSet:RecordSet"
PASSWORD = SECRET_SENTINELS["random:index/randomPassword:RandomPassword"]
DNS_NAME = f"{SQL_DNS_UID}.{SQL_DNS_UID[::-1]}.asia-northeast1.sql-psa.goog"


def mode_plan(mode: str):
    # ssl and plaintext log in with a password (IAM login needs the proxy): dev turns iamAuth off for them.
    return run_plan("dev", **{"convex-gcp:connectionMode": mode, **({} if mode == "proxy" else {"convex-gcp:iamAuth": "false"})})


def env(plan, key: str) -> dict[str, str]:
    text = plan.one(VM).inputs["metadata"][key]
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def roles(plan) -> set[str]:
    return {r.inputs["role"] for r in plan.of_type("gcp:projects/iAMMember:IAMMember")}


@pytest.mark.parametrize("mode", ["proxy", "ssl", "plaintext"])
def test_instance_tls_settings_per_mode(mode):
    plan = mode_plan(mode)
    instance = plan.one(SQL)
    ip = instance.inputs["settings"]["ipConfiguration"]
    expected = {"proxy": "TRUSTED_CLIENT_CERTIFICATE_REQUIRED", "ssl": "ENCRYPTED_ONLY", "plaintext": "ALLOW_UNENCRYPTED_AND_ENCRYPTED"}
    assert ip["sslMode"] == expected[mode]
    # The same CA in every mode, so a switch never asks Cloud SQL to change it.
    assert ip["serverCaMode"] == "GOOGLE_MANAGED_CAS_CA"
    assert ip["ipv4Enabled"] is False
    assert instance.inputs["settings"]["connectorEnforcement"] == ("REQUIRED" if mode == "proxy" else "NOT_REQUIRED")
    # Only ssl mode insists on the CA of an existing (older or adopted) instance.
    ignored = "settings.ipConfiguration.serverCaMode" in instance.ignore_changes
    assert ignored is (mode != "ssl")
    assert plan.outputs["connection_mode"]["value"] == mode


def test_ssl_private_dns_zone_and_record():
    plan = mode_plan("ssl")
    zone = plan.one(ZONE)
    assert zone.inputs["dnsName"] == DNS_NAME + "."
    assert zone.inputs["visibility"] == "private"
    networks = zone.inputs["privateVisibilityConfig"]["networks"]
    assert networks == [{"networkUrl": "projects/example-convex-dev/global/networks/convex-dev-vpc"}]
    record = plan.one(RECORD)
    assert (record.inputs["name"], record.inputs["type"], record.inputs["rrdatas"]) == (DNS_NAME + ".", "A", [SQL_PRIVATE_IP])
    assert record.inputs["managedZone"] == zone.inputs["name"]
    services = {s.inputs["service"] for s in plan.of_type("gcp:projects/service:Service")}
    assert "dns.googleapis.com" in services
    # The VM boots only once the name resolves.
    assert record.urn in plan.one(VM).dependencies


@pytest.mark.parametrize("mode", ["proxy", "plaintext"])
def test_no_dns_zone_outside_ssl(mode):
    plan = mode_plan(mode)
    assert plan.of_type(ZONE) == [] and plan.of_type(RECORD) == []
    services = {s.inputs["service"] for s in plan.of_type("gcp:projects/service:Service")}
    assert "dns.googleapis.com" not in services


def test_ssl_convex_env_verifies_by_name():
    plan = mode_plan("ssl")
    backend = env(plan, "convex-backend-env")
    url = backend["POSTGRES_URL"]
    assert url == f"postgresql://convex@{DNS_NAME}:5432"
    host = url.split("@", 1)[1].rsplit(":", 1)[0]
    assert not host.replace(".", "").isdigit() and host != SQL_PRIVATE_IP
    assert backend["PG_CA_FILE"] == "/convex-gcp/sql-ca.pem"
    assert "DO_NOT_REQUIRE_SSL" not in backend and "sslmode" not in url
    config = env(plan, "convex-gcp-config")
    assert config["CONNECTION_MODE"] == "ssl"
    assert config["SQL_INSTANCE"] == plan.outputs["sql_connection_name"]["value"]
    assert not any(key.startswith("PROXY_") for key in config)
    assert config["DB_PASSWORD_SECRET_ID"] == "projects/example-convex-dev/secrets/convex-dev-db-password"
    # The VM reads the server CAs from the SQL Admin API; listServerCas needs cloudsql.viewer.
    assert {"roles/cloudsql.client", "roles/cloudsql.viewer"} <= roles(plan)
    assert "roles/cloudsql.viewer" not in roles(mode_plan("proxy"))


def test_plaintext_convex_env_and_warning():
    plan = mode_plan("plaintext")
    backend = env(plan, "convex-backend-env")
    assert backend["POSTGRES_URL"] == f"postgresql://convex@{SQL_PRIVATE_IP}:5432?sslmode=disable&connect_timeout=30"
    assert backend["DO_NOT_REQUIRE_SSL"] == "1" and "PG_CA_FILE" not in backend
    config = env(plan, "convex-gcp-config")
    assert not any(key.startswith("PROXY_") for key in config) and "SQL_INSTANCE" not in config
    assert "roles/cloudsql.client" not in roles(plan)
    assert any("plaintext" in w and "NOT encrypted" in w for w in plan.warnings)
    assert not any("NOT encrypted" in w for w in mode_plan("ssl").warnings)


@pytest.mark.parametrize("mode", ["ssl", "plaintext"])
def test_built_in_user_password_only_in_secret_places(mode):
    plan = mode_plan(mode)
    user = plan.one("gcp:sql/user:User")
    assert (user.inputs["type"], user.inputs["name"]) == ("BUILT_IN", "convex")
    assert "password" in user.secret_inputs
    for resource in plan.resources:
        for path in paths_holding(resource.inputs, (PASSWORD,)):
            assert path in resource.secret_inputs, f"{resource.name}.{path}"
            assert resource.type in ("gcp:secretmanager/secretVersion:SecretVersion", "gcp:sql/user:User")
    assert PASSWORD not in json.dumps(plan.one(VM).inputs["metadata"])
    assert all(PASSWORD not in json.dumps(o["value"]) for o in plan.outputs.values())
    # Only the VM's service account may read it.
    readers = [r for r in plan.of_type("gcp:secretmanager/secretIamMember:SecretIamMember") if r.name.startswith("identity-db-password")]
    assert [(r.inputs["role"], r.inputs["member"]) for r in readers] == [
        ("roles/secretmanager.secretAccessor", "serviceAccount:convex-dev-vm@example-convex-dev.iam.gserviceaccount.com")
    ]


def test_plaintext_in_prod_fails_clearly():
    plan = run_plan_with("prod", {"convex-gcp:connectionMode": "plaintext"})
    assert "convex-gcp:connectionMode" in plan.error and "dev stacks only" in plan.error
    assert "Traceback" not in plan.error
    assert not [r for r in plan.resources if r.custom]


def test_iam_auth_with_ssl_fails_clearly():
    plan = run_plan_with("dev", {"convex-gcp:connectionMode": "ssl", "convex-gcp:iamAuth": "true"})
    assert "convex-gcp:iamAuth" in plan.error and "pulumi config set 'convex-gcp:iamAuth' false" in plan.error
    assert not [r for r in plan.resources if r.custom]
