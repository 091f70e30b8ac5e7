"""Monitoring (uptime check, alert policies, channels) and the data-disk snapshot schedule."""

from __future__ import annotations

import json

import pytest

from components.monitoring import START_LINES, connections_threshold, uptime_target
from tests.conftest import run_plan_with
from convex_gcp.settings import ConfigError, load_settings
from tools.plan import stack_config

ALERT = "gcp:monitoring/alertPolicy:AlertPolicy"
UPTIME = "gcp:monitoring/uptimeCheckConfig:UptimeCheckConfig"
CHANNEL = "gcp:monitoring/notificationChannel:NotificationChannel"
POLICY = "gcp:compute/resourcePolicy:ResourcePolicy"
ATTACH = "gcp:compute/diskResourcePolicyAttachment:DiskResourcePolicyAttachment"


def monitoring(**fields) -> dict[str, str]:
    return {"convex-gcp:monitoring": json.dumps(fields)}


def filters(policy) -> str:
    return " ".join(c.get("conditionThreshold", c.get("conditionAbsent", {})).get("filter", "") for c in policy.inputs["conditions"])


def test_dev_has_no_monitoring_by_default():
    plan = run_plan_with("dev", {})
    assert not plan.error
    assert plan.of_type(ALERT) == [] and plan.of_type(UPTIME) == []


def test_prod_has_monitoring_by_default_with_its_email_channel():
    plan = run_plan_with("prod", {})
    # A prod plan that fails must fail this test, not skip it.
    assert not plan.error, plan.error
    assert [c.inputs["labels"] for c in plan.of_type(CHANNEL)] == [{"email_address": "oncall@acmecorp.dev"}]  # tools/offline_values.py
    assert len(plan.of_type(ALERT)) == 8
    # Labelled like every other component: the stack name, not the resource prefix.
    labelled = plan.of_type(CHANNEL) + plan.of_type(ALERT) + plan.of_type(UPTIME)
    assert labelled and all(r.inputs["userLabels"] == {"app": "convex", "environment": "prod", "stack": "prod"}
                            for r in labelled)


def test_prod_without_emails_is_a_config_problem():
    config = stack_config("prod")
    config["convex-gcp:monitoring"] = json.dumps({"notificationEmails": []})
    with pytest.raises(ConfigError) as error:
        load_settings(config, "prod")
    problem = next(p for p in error.value.problems if p.path == "convex-gcp:monitoring.notificationEmails")
    assert "notificationEmails[0]" in problem.fix


def test_bad_email_and_threshold_are_problems():
    config = stack_config("dev")
    config["convex-gcp:monitoring"] = json.dumps({"notificationEmails": ["not-an-email"], "sqlCpuUtilization": 80})
    with pytest.raises(ConfigError) as error:
        load_settings(config, "dev")
    paths = {p.path for p in error.value.problems}
    assert {"convex-gcp:monitoring.notificationEmails", "convex-gcp:monitoring.sqlCpuUtilization"} <= paths


@pytest.fixture(scope="module")
def monitored():
    # The uptime check needs a URL Google's checkers reach: without a domain, the public HTTP opt-in.
    public = {"convex-gcp:network": json.dumps({"apiSourceRanges": ["0.0.0.0/0"], "publicHttpWithoutTls": True})}
    plan = run_plan_with("dev", {**monitoring(enabled=True, notificationEmails=["a@example.com", "b@example.com"], sqlCpuUtilization=0.7, sqlConnectionsRatio=0.5), **public})
    assert not plan.error, plan.error
    return plan


def test_uptime_check_probes_version_on_the_convex_url(monitored):
    check = monitored.one(UPTIME)
    assert check.inputs["httpCheck"]["path"] == "/version"
    assert check.inputs["httpCheck"]["port"] == 3210
    assert check.inputs["httpCheck"]["useSsl"] is False
    assert check.inputs["monitoredResource"] == {"type": "uptime_url", "labels": {"project_id": "example-convex-dev", "host": "34.84.10.20"}}
    assert check.inputs["period"] == "60s"


def test_uptime_target_for_https_front_door():
    assert uptime_target("https://api.convex.example.com") == {"host": "api.convex.example.com", "port": 443, "use_ssl": True, "path": "/version"}


def test_every_policy_notifies_every_channel(monitored):
    channels = sorted(f"projects/example-convex-dev/notificationChannels/{c.name}" for c in monitored.of_type(CHANNEL))
    assert len(channels) == 2
    for policy in monitored.of_type(ALERT):
        assert sorted(policy.inputs["notificationChannels"]) == channels, policy.name


def test_cloud_sql_thresholds_come_from_config(monitored):
    cpu = monitored.by_name("monitoring-sql-cpu").inputs["conditions"][0]["conditionThreshold"]
    assert cpu["thresholdValue"] == 0.7
    assert 'resource.label.database_id = "example-convex-dev:convex-dev-pg-a1b2"' in cpu["filter"]
    assert "cloudsql.googleapis.com/database/cpu/utilization" in cpu["filter"]
    for name, metric in (("sql-memory", "memory/utilization"), ("sql-disk", "disk/utilization")):
        assert f"cloudsql.googleapis.com/database/{metric}" in filters(monitored.by_name(f"monitoring-{name}"))
    # db-g1-small: max_connections 50; half of it.
    connections = monitored.by_name("monitoring-sql-connections").inputs["conditions"][0]["conditionThreshold"]
    assert "postgresql/num_backends" in connections["filter"]
    assert connections["thresholdValue"] == 25 == connections_threshold(50, 0.5)


def test_vm_down_and_uptime_failure_policies(monitored):
    vm = monitored.by_name("monitoring-vm-down")
    assert "conditionAbsent" in vm.inputs["conditions"][0]
    assert 'resource.label.instance_id = "1234567890"' in filters(vm)
    down = monitored.by_name("monitoring-convex-down")
    assert 'metric.label.check_id = "monitoring-uptime-check-id"' in filters(down)
    assert down.inputs["severity"] == "CRITICAL"


def test_restart_alerts_match_each_containers_start_line(monitored):
    # Log-match conditions: no log-based metric that a first deploy's alert policy would 404 on.
    assert monitored.of_type("gcp:logging/metric:Metric") == []
    for container in START_LINES:
        policy = monitored.by_name(f"monitoring-{container}-restarts").inputs
        log = policy["conditions"][0]["conditionMatchedLog"]["filter"]
        assert START_LINES[container] in log and f'jsonPayload.container.name:"{container}"' in log
        assert 'logName="projects/example-convex-dev/logs/gcplogs-docker-driver"' in log
        assert 'resource.labels.instance_id="1234567890"' in log
        # Monitoring requires a notification rate limit on log-match policies.
        assert policy["alertStrategy"]["notificationRateLimit"]["period"] == "600s"


def test_connections_alert_sums_the_instances_databases(monitored):
    threshold = monitored.by_name("monitoring-sql-connections").inputs["conditions"][0]["conditionThreshold"]
    (aggregation,) = threshold["aggregations"]
    assert aggregation["crossSeriesReducer"] == "REDUCE_SUM"
    assert aggregation["groupByFields"] == ["resource.label.database_id"]
    cpu = monitored.by_name("monitoring-sql-cpu").inputs["conditions"][0]["conditionThreshold"]
    assert "crossSeriesReducer" not in cpu["aggregations"][0]


def test_data_disk_snapshot_schedule_attached_to_the_data_disk():
    plan = run_plan_with("dev", {})
    policy = plan.one(POLICY).inputs
    schedule = policy["snapshotSchedulePolicy"]
    assert schedule["schedule"]["dailySchedule"] == {"daysInCycle": 1, "startTime": "19:00"}
    assert schedule["retentionPolicy"] == {"maxRetentionDays": 14, "onSourceDiskDelete": "KEEP_AUTO_SNAPSHOTS"}
    attachment = plan.one(ATTACH).inputs
    assert attachment["disk"] == "convex-dev-data" and attachment["name"] == policy["name"] == "convex-dev-data-snapshots"
    assert attachment["zone"] == "asia-northeast1-a"


def test_snapshot_settings_from_config_and_off_switch():
    vm = json.loads(stack_config("dev")["convex-gcp:vm"])
    custom = run_plan_with("dev", {"convex-gcp:vm": json.dumps({**vm, "dataDiskSnapshots": {"retentionDays": 30, "startTime": "03:00", "keepOnDiskDelete": False}})})
    schedule = custom.one(POLICY).inputs["snapshotSchedulePolicy"]
    assert schedule["retentionPolicy"] == {"maxRetentionDays": 30, "onSourceDiskDelete": "APPLY_RETENTION_POLICY"}
    assert schedule["schedule"]["dailySchedule"]["startTime"] == "03:00"
    off = run_plan_with("dev", {"convex-gcp:vm": json.dumps({**vm, "dataDiskSnapshots": {"enabled": False}})})
    assert off.of_type(POLICY) == [] and off.of_type(ATTACH) == []
