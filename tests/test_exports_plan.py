"""The exports bucket, the VM's rights on it and the export-age alert, as the offline plans declare them."""

from __future__ import annotations

import json

import pytest

from convex_gcp import runtime
from convex_gcp.settings import ConfigError, load_settings
from tests.conftest import run_plan
from tools.plan import stack_config

BUCKET = "gcp:storage/bucket:Bucket"
ROLE = "gcp:projects/iAMCustomRole:IAMCustomRole"
BINDING = "gcp:storage/bucketIAMMember:BucketIAMMember"
DESCRIPTOR = "gcp:monitoring/metricDescriptor:MetricDescriptor"


@pytest.fixture(params=["dev", "prod"])
def plan(request):
    return run_plan(request.param)


def config(plan) -> dict[str, str]:
    meta = plan.one("gcp:compute/instance:Instance").inputs["metadata"] if plan.of_type("gcp:compute/instance:Instance") else None
    if meta is None:  # an instance template once the VM is a managed instance group
        meta = plan.one("gcp:compute/instanceTemplate:InstanceTemplate").inputs["metadata"]
    return dict(line.split("=", 1) for line in meta["convex-gcp-config"].splitlines() if line)


def test_the_bucket_keeps_every_export_for_its_retention_and_no_longer(plan):
    b = plan.one(BUCKET)
    inputs = b.inputs
    prod = plan.stack == "prod"
    days = 30 if prod else 7
    assert inputs["location"] == ("ASIA-NORTHEAST1")
    assert inputs["uniformBucketLevelAccess"] is True and inputs["publicAccessPrevention"] == "enforced"
    assert inputs["retentionPolicy"] == {"retentionPeriod": days * 86400, "isLocked": prod}
    # Object Versioning is not allowed with a retention policy: retention and soft delete instead.
    assert inputs["versioning"] == {"enabled": False} and inputs["softDeletePolicy"] == {"retentionDurationSeconds": 7 * 86400}
    assert inputs["lifecycleRules"] == [{"action": {"type": "Delete"}, "condition": {"age": days + 1}}]
    assert inputs["forceDestroy"] is False
    assert inputs["name"].startswith(f"convex-{plan.stack}-exports-")
    # Exports outlive the stack: destroy leaves the bucket (retain_on_delete), and a new one gets a new name.
    assert plan.one("random:index/randomString:RandomString").name == "exports-suffix"


def test_the_vm_may_create_exports_and_nothing_else(plan):
    # Storage Object Creator on this bucket alone: create, never read, delete or replace. No custom role:
    # the deployer would need project-wide iam.roles.* to manage one (components/exports.py).
    assert not plan.of_type(ROLE)
    binding = plan.one(BINDING).inputs
    assert binding["role"] == "roles/storage.objectCreator" and binding["bucket"].startswith(f"convex-{plan.stack}-exports-")
    sa = plan.by_name("identity-vm-sa").inputs["accountId"]  # not the grant account (components/identity.py)
    assert binding["member"] == f"serviceAccount:{sa}@example-convex-{plan.stack}.iam.gserviceaccount.com"
    # No project-wide storage role for the VM: its only storage right is this binding.
    project_roles = [r.inputs["role"] for r in plan.of_type("gcp:projects/iAMMember:IAMMember")]
    assert not [r for r in project_roles if r.startswith("roles/storage")]


def test_the_vm_is_told_the_bucket_interval_and_metric(plan):
    cfg = config(plan)
    assert cfg["EXPORT_BUCKET"] == plan.one(BUCKET).inputs["name"]
    assert cfg["EXPORT_INTERVAL_S"] == str((6 if plan.stack == "prod" else 24) * 3600)
    assert cfg["EXPORT_METRIC"] == plan.one(DESCRIPTOR).inputs["type"] == runtime.export_metric_type(f"convex-{plan.stack}")
    assert plan.outputs["exports_bucket"]["value"] == cfg["EXPORT_BUCKET"]


def test_export_age_alert_reads_what_the_vm_writes(prod_plan):
    (policy,) = [p for p in prod_plan.of_type("gcp:monitoring/alertPolicy:AlertPolicy") if p.name == "monitoring-export-age"]
    late, absent = policy.inputs["conditions"]
    metric = prod_plan.one(DESCRIPTOR).inputs["type"]
    assert late["conditionThreshold"]["filter"] == f'metric.type = "{metric}" AND resource.type = "gce_instance"'
    assert late["conditionThreshold"]["thresholdValue"] == 2 * 6 * 3600
    assert absent["conditionAbsent"]["filter"] == late["conditionThreshold"]["filter"] and absent["conditionAbsent"]["duration"] == "3600s"
    assert policy.inputs["notificationChannels"]
    # The VM writes that metric, with the bucket label the alert groups by (vm/convex-export.sh report_age).
    script = runtime.EXPORT_SCRIPT.read_text()
    assert '"metric":{"type":"%s","labels":{"bucket":"%s"}}' in script and '"type":"gce_instance"' in script


def test_exports_can_be_switched_off():
    plan = run_plan("dev", **{"convex-gcp:exports": json.dumps({"enabled": False})})
    assert not plan.error, plan.error
    assert plan.of_type(BUCKET) == [] and plan.of_type(ROLE) == [] and "exports_bucket" not in plan.outputs
    assert "EXPORT_BUCKET" not in config(plan)


def test_retention_must_cover_two_intervals():
    c = stack_config("prod")
    c["convex-gcp:exports"] = json.dumps({"intervalHours": 24, "retentionDays": 1})
    with pytest.raises(ConfigError) as error:
        load_settings(c, "prod")
    assert "convex-gcp:exports.retentionDays" in str(error.value) and "exports.retentionDays' 2" in str(error.value)
