"""Adopting the seed guide's resources: import ids in the formats pulumi-gcp documents, and
what the program declares so the import can match the existing resources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_plan_with
from convex_gcp import adoption
from convex_gcp.settings import ConfigError, load_settings
from tools.plan import stack_config

SEED = {
    "convex-gcp:adopt": json.dumps({"sqlInstance": "convex-postgres", "peeringRange": "google-managed-services-default", "vm": "convex-backend-instance"}),
    # The seed guide serves Convex over plain HTTP on the VM's IP: an explicit opt-in here.
    "convex-gcp:network": json.dumps({"existingNetwork": "default", "apiSourceRanges": ["0.0.0.0/0"], "publicHttpWithoutTls": True}),
    "convex-gcp:convex": json.dumps({"instanceName": "convex-self-hosted"}),
}


def test_import_id_formats_match_pulumi_gcp_docs():
    # pulumi-gcp 10.2.0 "Import" sections (sql/database_instance.py, compute/global_address.py,
    # servicenetworking/connection.py, compute/instance.py, sql/database.py).
    assert adoption.sql_instance_id("p", "convex-postgres") == "projects/p/instances/convex-postgres"
    assert adoption.global_address_id("p", "google-managed-services-default") == "projects/p/global/addresses/google-managed-services-default"
    assert adoption.service_networking_connection_id("p", "default") == "projects/p/global/networks/default:servicenetworking.googleapis.com"
    assert adoption.compute_instance_id("p", "asia-northeast1-a", "convex-backend-instance") == "projects/p/zones/asia-northeast1-a/instances/convex-backend-instance"
    assert adoption.sql_database_id("p", "convex-postgres", "convex_self_hosted") == "projects/p/instances/convex-postgres/databases/convex_self_hosted"


def test_connection_id_splits_into_network_and_service_like_the_provider():
    # terraform-provider-google parseConnectionId: exactly two ':'-separated parts.
    network, service = adoption.service_networking_connection_id("p", "default").split(":")
    assert network == "projects/p/global/networks/default" and service == "servicenetworking.googleapis.com"


def test_import_ids_documented_in_the_provider_sdk():
    """The formats above, checked against the installed SDK's own docs so a provider bump that
    changes them fails here. Read from the SDK's files: importing pulumi_gcp.compute costs ~1 s."""
    import importlib.util

    sdk = Path(importlib.util.find_spec("pulumi_gcp").submodule_search_locations[0])
    docs = {
        ("sql/database_instance.py", "DatabaseInstance"): "projects/{{project}}/instances/{{name}}",
        ("compute/global_address.py", "GlobalAddress"): "projects/{{project}}/global/addresses/{{name}}",
        ("compute/instance.py", "Instance"): "projects/{{project}}/zones/{{zone}}/instances/{{name}}",
        ("servicenetworking/connection.py", "Connection"): "projects/{{project}}/global/networks/{{peering-network}}:{{service}}",
        ("sql/database.py", "Database"): "projects/{{project}}/instances/{{instance}}/databases/{{name}}",
    }
    for (file, resource), pattern in docs.items():
        source = (sdk / file).read_text()
        assert f"\nclass {resource}(pulumi.CustomResource):" in source, f"{resource} is not defined in {file}"
        assert pattern in source, resource


@pytest.fixture(scope="module")
def seed_plan():
    plan = run_plan_with("dev", SEED)
    assert not plan.error, plan.error
    return plan


def test_seed_resources_are_imported_not_created(seed_plan):
    project = "example-convex-dev"
    sql = seed_plan.one("gcp:sql/databaseInstance:DatabaseInstance")
    assert sql.import_id == f"projects/{project}/instances/convex-postgres"
    assert sql.inputs["name"] == "convex-postgres"
    assert sql.protect  # it predates the stack; dev or not
    db = seed_plan.one("gcp:sql/database:Database")
    assert db.import_id == f"projects/{project}/instances/convex-postgres/databases/convex_self_hosted"
    assert db.inputs["deletionPolicy"] == "ABANDON"
    rng = seed_plan.one("gcp:compute/globalAddress:GlobalAddress")
    assert rng.import_id == f"projects/{project}/global/addresses/google-managed-services-default"
    assert rng.inputs["name"] == "google-managed-services-default"
    assert "description" not in rng.inputs  # forces replacement; the seed's range has none
    conn = seed_plan.one("gcp:servicenetworking/connection:Connection")
    assert conn.import_id == f"projects/{project}/global/networks/default:servicenetworking.googleapis.com"
    # The declared network must equal the network part of the import id, or the peering is replaced.
    assert conn.inputs["network"] == conn.import_id.split(":")[0]
    assert conn.inputs["deletionPolicy"] == "ABANDON"  # a shared network keeps its peering
    # A VM cannot be imported into a managed instance group: the group's VM takes the seed VM's name
    # (docs/adoption.md: delete the seed VM, keeping its disks, before the first `pulumi up`).
    vm = seed_plan.one("gcp:compute/perInstanceConfig:PerInstanceConfig")
    assert not vm.import_id and vm.inputs["name"] == "convex-backend-instance"
    assert not seed_plan.of_type("gcp:compute/instance:Instance")
    assert seed_plan.of_type("random:index/randomId:RandomId") == []  # no generated instance name


def test_no_imports_without_adopt(dev_plan):
    assert [r.name for r in dev_plan.resources if r.import_id] == []


def test_adopting_only_the_instance_imports_only_it():
    plan = run_plan_with("dev", {"convex-gcp:adopt": json.dumps({"sqlInstance": "convex-postgres", "database": False})})
    assert not plan.error, plan.error
    assert [r.type for r in plan.resources if r.import_id] == ["gcp:sql/databaseInstance:DatabaseInstance"]


def problems(overrides: dict[str, str]) -> dict[str, str]:
    config = stack_config("dev")
    config.update(overrides)
    with pytest.raises(ConfigError) as error:
        load_settings(config, "dev")
    return {p.path: p.fix for p in error.value.problems}


def test_range_without_its_network_is_a_problem():
    found = problems({"convex-gcp:adopt": json.dumps({"peeringRange": "google-managed-services-default"})})
    assert found["convex-gcp:network.existingNetwork"] == "pulumi config set --path 'convex-gcp:network.existingNetwork' default"


def test_instance_on_an_existing_network_needs_its_range():
    found = problems({**SEED, "convex-gcp:adopt": json.dumps({"sqlInstance": "convex-postgres"})})
    assert "google-managed-services-default" in found["convex-gcp:adopt.peeringRange"]


def test_conflicting_instance_names_are_a_problem():
    db = json.loads(stack_config("dev")["convex-gcp:database"])
    found = problems({**SEED, "convex-gcp:database": json.dumps({**db, "instanceName": "other"})})
    assert "convex-gcp:database.instanceName" in found


def test_bad_adopt_name_is_a_problem():
    found = problems({"convex-gcp:adopt": json.dumps({"sqlInstance": "Convex_Postgres"})})
    assert "convex-gcp:adopt.sqlInstance" in found
