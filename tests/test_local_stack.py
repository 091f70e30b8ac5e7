"""The `local` stack (docs/local.md): __main__.py under the SDK's mocks with Pulumi.local.yaml,
and the pure functions behind its containers' environments."""

from __future__ import annotations

import json

import pytest

from convex_gcp import cloudsql
from convex_gcp.local_runtime import backend_env_lines, local_backend_env, local_postgres_url, with_password
from convex_gcp.runtime import RuntimeInputs, backend_env
from convex_gcp.settings import ConfigError, load_local_settings, load_settings
from tests.conftest import ROOT, run_plan, run_plan_with
from tools.mocks import SECRET_SENTINELS
from tools.plan import render_markdown, stack_config

CONTAINER = "docker:index/container:Container"
PASSWORD = SECRET_SENTINELS["random:index/randomPassword:RandomPassword"]
CONTRACT = json.loads((ROOT / "docs" / "outputs.json").read_text())


@pytest.fixture(scope="module")
def plan():
    result = run_plan("local")
    assert not result.error, result.error
    return result


def container(plan, role: str):
    return plan.by_name(f"local-{role}-container")


def envs(resource) -> dict[str, str]:
    return dict(line.split("=", 1) for line in resource.inputs["envs"])


def local_settings(**overrides):
    return load_local_settings({**stack_config("local"), **overrides}, "local")


def test_only_docker_and_a_generated_password_no_google_resources(plan):
    types = {r.type for r in plan.resources if r.custom}
    assert types == {"docker:index/container:Container", "docker:index/remoteImage:RemoteImage", "docker:index/volume:Volume",
                     "docker:index/network:Network", "random:index/randomPassword:RandomPassword"}


def test_every_published_port_is_on_loopback_only(plan):
    ports = [p for r in plan.of_type(CONTAINER) for p in r.inputs.get("ports", [])]
    assert len(ports) == 4  # API, site, dashboard, Postgres
    assert {p["ip"] for p in ports} == {"127.0.0.1"}


def test_backend_gets_the_vms_rendering_in_plaintext_mode(plan):
    env = envs(container(plan, "backend"))
    settings = local_settings()
    dev = load_settings({**stack_config("dev"), "convex-gcp:connectionMode": "plaintext", "convex-gcp:iamAuth": "false"}, "dev")
    vm = backend_env(dev, RuntimeInputs("p", "c", "34.84.10.20", "convex-dev", "i", "a", sql_private_ip="10.0.0.3"))
    # The same variables as the VM in plaintext mode, nothing more (no INSTANCE_SECRET: it lives in the volume).
    assert set(env) == set(vm)
    assert "INSTANCE_SECRET" not in env
    assert env["INSTANCE_NAME"] == "convex-local"
    assert env["POSTGRES_URL"] == f"postgresql://convex:{PASSWORD}@postgres:5432?sslmode=disable&connect_timeout=30"
    assert env["DO_NOT_REQUIRE_SSL"] == "1"
    assert env["POSTGRES_MAX_CONNECTIONS"] == str(cloudsql.derived_pool(100)) == str(settings.pool_size)
    assert (env["CONVEX_CLOUD_ORIGIN"], env["CONVEX_SITE_ORIGIN"]) == ("http://127.0.0.1:3210", "http://127.0.0.1:3211")


def test_environments_carrying_the_password_are_secret(plan):
    for role in ("backend", "postgres"):
        assert "envs" in container(plan, role).secret_inputs, role


def test_database_is_created_by_postgres_before_the_backend_starts(plan):
    postgres, backend = container(plan, "postgres"), container(plan, "backend")
    assert envs(postgres)["POSTGRES_DB"] == "convex_local" == cloudsql.database_name("convex-local")
    assert envs(postgres)["POSTGRES_USER"] == "convex"
    assert postgres.inputs["healthcheck"]["tests"][:4] == ["CMD", "pg_isready", "-h", "127.0.0.1"]
    assert postgres.inputs["wait"] is True
    assert postgres.urn in backend.dependencies
    assert postgres.inputs["command"] == ["postgres", "-c", "max_connections=100"]


def test_backend_health_stop_signal_and_data_volume(plan):
    backend = container(plan, "backend").inputs
    assert backend["healthcheck"]["tests"] == ["CMD", "curl", "-f", "http://localhost:3210/version"]
    assert backend["stopSignal"] == "SIGINT"
    assert backend["wait"] is True
    assert backend["volumes"] == [{"containerPath": "/convex/data", "volumeName": "convex-local-data"}]
    assert container(plan, "postgres").inputs["volumes"] == [{"containerPath": "/var/lib/postgresql/data", "volumeName": "convex-local-pgdata"}]
    assert container(plan, "dashboard").urn and container(plan, "backend").urn in container(plan, "dashboard").dependencies


def test_images_are_the_vms_pins(plan, dev_plan):
    meta = dict(line.split("=", 1) for line in dev_plan.one("gcp:compute/instanceTemplate:InstanceTemplate").inputs["metadata"]["convex-gcp-config"].splitlines())
    names = {r.name: r.inputs["name"] for r in plan.of_type("docker:index/remoteImage:RemoteImage")}
    assert names["local-backend-image"] == meta["BACKEND_IMAGE"]
    assert names["local-dashboard-image"] == meta["DASHBOARD_IMAGE"]
    assert names["local-postgres-image"] == "postgres:17.9-bookworm"
    assert all(":latest" not in n and ":" in n for n in names.values())


def test_outputs_are_the_documented_subset(plan):
    local = CONTRACT["local"]
    assert set(local["subset"]) <= set(CONTRACT["outputs"])
    assert set(plan.outputs) == set(local["subset"]) | set(local["local_only"])
    assert {k for k, v in plan.outputs.items() if v["secret"]} == {k for k, v in local["local_only"].items() if v["secret"]}
    assert plan.outputs["connection_mode"]["value"] == "plaintext"
    assert plan.outputs["admin_key_command"]["value"] == "docker exec convex-local-backend ./generate_admin_key.sh"


def test_the_password_never_appears_in_plaintext(plan):
    plain = json.dumps({k: v["value"] for k, v in plan.outputs.items() if not v["secret"]})
    assert PASSWORD not in plain
    assert PASSWORD not in render_markdown(plan)
    assert PASSWORD not in (ROOT / "docs" / "plans" / "local.md").read_text()


def test_no_dashboard_when_disabled():
    result = run_plan_with("local", {"convex-gcp:convex": json.dumps({"instanceName": "convex-local", "dashboard": False})})
    assert "dashboard_url" not in result.outputs
    assert not [r for r in result.of_type(CONTAINER) if "dashboard" in r.name]


@pytest.mark.parametrize(
    ("key", "value"),
    [("gcp:project", "my-project"), ("convex-gcp:database", json.dumps({"tier": "db-f1-micro"})), ("convex-gcp:network", "{}"), ("convex-gcp:connectionMode", "proxy")],
)
def test_google_cloud_keys_are_errors_on_a_local_stack(key, value):
    result = run_plan_with("local", {key: value})
    assert f"{key}: is a Google Cloud setting" in result.error
    assert f"pulumi config rm '{key}'" in result.error
    assert not result.resources


def test_local_keys_are_errors_on_a_google_cloud_stack():
    result = run_plan_with("dev", {"convex-gcp:local": json.dumps({"apiPort": 3210})})
    assert "convex-gcp:local: is a setting of local (Docker) stacks" in result.error
    assert not result.resources


def test_unknown_target():
    with pytest.raises(ConfigError) as raised:
        load_settings({**stack_config("dev"), "convex-gcp:target": "docker"}, "dev")
    assert "convex-gcp:target: 'docker' is not a target" in str(raised.value)
    assert "pulumi config set 'convex-gcp:target' local" in str(raised.value)


@pytest.mark.parametrize(
    ("local", "path", "reason"),
    [
        ({"apiPort": 5432}, "convex-gcp:local.postgresPort", "port 5432 is also local.apiPort"),
        ({"postgresTag": "latest"}, "convex-gcp:local.postgresTag", "is not a pinned postgres image tag"),
        ({"apiPrt": 1}, "convex-gcp:local.apiPrt", "unknown key 'apiPrt'"),
        ({"maxConnections": 5}, "convex-gcp:local.maxConnections", "5 is out of range"),
    ],
)
def test_local_settings_errors(local, path, reason):
    with pytest.raises(ConfigError) as raised:
        local_settings(**{"convex-gcp:local": json.dumps(local)})
    assert f"{path}: " in str(raised.value) and reason in str(raised.value)


def test_pool_must_fit_under_local_max_connections():
    with pytest.raises(ConfigError) as raised:
        local_settings(**{"convex-gcp:convex": json.dumps({"poolSize": 95})})
    assert "convex-gcp:convex.poolSize: 95 connections do not fit under local.maxConnections 100" in str(raised.value)
    assert local_settings(**{"convex-gcp:convex": json.dumps({"poolSize": 87})}).pool_size == 87


def test_custom_ports_move_the_origins_and_the_dashboards_url():
    settings = local_settings(**{"convex-gcp:local": json.dumps({"apiPort": 13210, "sitePort": 13211})})
    env = local_backend_env(settings)
    assert env["CONVEX_CLOUD_ORIGIN"] == "http://127.0.0.1:13210"
    assert env["CONVEX_SITE_ORIGIN"] == "http://127.0.0.1:13211"


def test_password_insertion_matches_the_vm():
    assert with_password("postgresql://convex@postgres:5432?sslmode=disable", "abc123") == "postgresql://convex:abc123@postgres:5432?sslmode=disable"
    with pytest.raises(ValueError):
        with_password("postgresql://convex@postgres:5432", "a@b")
    with pytest.raises(ValueError):
        with_password("postgresql://postgres:5432", "abc")
    lines = backend_env_lines(local_settings(), "abc123")
    assert "POSTGRES_URL=postgresql://convex:abc123@postgres:5432?sslmode=disable&connect_timeout=30" in lines


def test_host_side_database_url_names_the_database():
    assert local_postgres_url(local_settings(), "pw1") == "postgresql://convex:pw1@127.0.0.1:5432/convex_local"
