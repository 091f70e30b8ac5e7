"""Monitoring (uptime check, alert policies, channels) and the data-disk snapshot schedule."""

from __future__ import annotations

import json

import pytest

import re

from components.monitoring import CONTAINER_LOGS, START_LINES, connections_threshold, uptime_target
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


def unit_metadata(plan) -> dict[str, str]:
    """The rendered units the VM gets, from whichever resource carries the instance metadata."""
    for resource in plan.resources:
        metadata = resource.inputs.get("metadata")
        if isinstance(metadata, dict) and any(k.startswith("convex-gcp-unit-") for k in metadata):
            return {k.removeprefix("convex-gcp-unit-"): v for k, v in metadata.items() if k.startswith("convex-gcp-unit-")}
    raise AssertionError("no resource carries the units' metadata")


def docker_run(unit: str) -> str:
    """The unit's `docker run` command line, continuation lines joined."""
    text = unit.replace("\\\n", " ")
    (line,) = [l for l in text.splitlines() if l.startswith("ExecStart=") and " run " in l]
    return line


def log_source_mismatches(unit: str, log_filter: str, project: str) -> list[str]:
    """What the unit writes (driver, container name, journal copy) against what the alert matches."""
    run = docker_run(unit)
    driver = re.search(r"--log-driver[ =](\S+)", run)
    name = re.search(r"--name[ =](\S+)", run)
    problems = []
    if not driver or driver.group(1) not in CONTAINER_LOGS:
        return [f"log driver {driver and driver.group(1)!r}: no known Cloud Logging log for it"]
    log = CONTAINER_LOGS[driver.group(1)]
    if f'logName="projects/{project}/logs/{log.log_id}"' not in log_filter:
        problems.append(f"{driver.group(1)} output lands in log {log.log_id}, the alert matches another")
    if not name or f'{log.name_field}="{name.group(1)}"' not in log_filter:
        problems.append(f"container {name and name.group(1)!r}: the alert matches another name")
    # A foreground `docker run` copies the output into the journal, which COS ships too: twice.
    for stream in ("StandardOutput", "StandardError"):
        if f"\n{stream}=null\n" not in unit:
            problems.append(f"{stream} is not null: the output would be shipped twice")
    return problems


def restart_filter(plan, container: str) -> str:
    return plan.by_name(f"monitoring-{container}-restarts").inputs["conditions"][0]["conditionMatchedLog"]["filter"]


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_restart_alerts_match_what_each_unit_writes(stack, monitored, prod_plan):
    plan = monitored if stack == "dev" else prod_plan
    units = unit_metadata(plan)
    for container in START_LINES:
        log = restart_filter(plan, container)
        project = re.search(r'logName="projects/([^/]+)/', log).group(1)
        assert log_source_mismatches(units[container], log, project) == [], container
        assert START_LINES[container] in log


@pytest.mark.parametrize("edit", [
    ("--log-driver json-file", "--log-driver journald"),
    ("--log-driver json-file", "--log-driver gcplogs"),
    ("--name convex-backend", "--name convex-api"),
    ("StandardOutput=null\n", ""),
    ("StandardError=null\n", ""),
])
def test_a_unit_changed_without_its_alert_is_caught(edit, monitored):
    units = unit_metadata(monitored)
    changed = units["convex-backend"].replace(*edit)
    assert changed != units["convex-backend"]
    log = restart_filter(monitored, "convex-backend")
    assert log_source_mismatches(units["convex-backend"], log, "example-convex-dev") == []
    assert log_source_mismatches(changed, log, "example-convex-dev") != []


def test_restart_alerts_are_log_match_on_the_vm_by_name(monitored):
    # Log-match conditions: no log-based metric that a first deploy's alert policy would 404 on.
    assert monitored.of_type("gcp:logging/metric:Metric") == []
    for container in START_LINES:
        policy = monitored.by_name(f"monitoring-{container}-restarts").inputs
        log = policy["conditions"][0]["conditionMatchedLog"]["filter"]
        # The VM by name: the instance id changes whenever the VM is recreated.
        assert 'labels."compute.googleapis.com/resource_name":"convex-dev-vm"' in log
        assert "instance_id" not in log
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
