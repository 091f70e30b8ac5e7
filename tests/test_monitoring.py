"""Monitoring (uptime check, alert policies, channels) and the data-disk snapshot schedule."""

from __future__ import annotations

import json

import pytest

import re

from components.monitoring import (BOOT_DISK_DEVICES, CONTAINER_LOGS, DATA_DISK_DEVICES, DISK_PERCENT, MEMORY_PERCENT, PROBLEM_COUNT,
                                   START_LINES, connections_threshold, uptime_target)
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
    assert len(plan.of_type(ALERT)) == 18  # the export-age policy (components/exports.py) and the upgrade policy included
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
    plan = run_plan_with("dev", {**monitoring(enabled=True, notificationEmails=["a@example.com", "b@example.com"], sqlCpuUtilization=0.7,
                                              sqlConnectionsRatio=0.5, vmMemoryUtilization=0.8), **public})
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
    assert 'metric.label.instance_name = "convex-dev-vm"' in filters(vm)  # the name survives a recreation
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
    # A foreground `docker run` copies stdout (all of Convex's logging) into the journal, which COS
    # ships too: twice. stderr stays in the journal on purpose (the unit says why).
    if "\nStandardOutput=null\n" not in unit:
        problems.append("StandardOutput is not null: the output would be shipped twice")
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
    ("StandardOutput=null\n", "StandardOutput=journal\n"),
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


def threshold(plan, key: str) -> dict:
    return plan.by_name(f"monitoring-{key}").inputs["conditions"][0]["conditionThreshold"]


def test_vm_memory_oom_and_disks_from_node_problem_detector_metrics(monitored):
    # COS's node-problem-detector sends these only with google-monitoring-enabled.
    metadata = unit_metadata(monitored)  # the same resource carries the instance metadata
    vm = next(r for r in monitored.resources if isinstance(r.inputs.get("metadata"), dict) and "google-monitoring-enabled" in r.inputs["metadata"])
    assert vm.inputs["metadata"]["google-monitoring-enabled"] == "true" and metadata
    by_vm = 'metric.label.instance_name = starts_with("convex-dev-vm")'
    memory = threshold(monitored, "vm-memory")
    assert f'metric.type = "{MEMORY_PERCENT}"' in memory["filter"] and 'metric.label.state = "used"' in memory["filter"]
    assert by_vm in memory["filter"] and memory["thresholdValue"] == 80  # percent, from vmMemoryUtilization 0.8
    oom = threshold(monitored, "vm-oom")
    assert f'metric.type = "{PROBLEM_COUNT}"' in oom["filter"] and 'metric.label.reason = "OOMKilling"' in oom["filter"]
    assert oom["thresholdValue"] == 0 and oom["aggregations"][0]["perSeriesAligner"] == "ALIGN_DELTA"
    for key, devices in (("vm-data-disk", DATA_DISK_DEVICES), ("vm-boot-disk", BOOT_DISK_DEVICES)):
        disk = threshold(monitored, key)
        assert f'metric.type = "{DISK_PERCENT}"' in disk["filter"] and by_vm in disk["filter"]
        assert all(f'"{d}"' in disk["filter"] for d in devices) and disk["thresholdValue"] == 85
    assert not set(DATA_DISK_DEVICES) & set(BOOT_DISK_DEVICES)


def test_every_policy_tells_on_call_what_it_means_and_what_to_run(monitored):
    for policy in monitored.of_type(ALERT):
        doc = policy.inputs["documentation"]
        assert doc["mimeType"] == "text/markdown", policy.name
        assert len(doc["content"]) > 120 and "tools.doctor" in doc["content"], policy.name
        # Something to run or set: a command, a config key or a runbook.
        assert "`" in doc["content"] or "docs/runbooks.md" in doc["content"], policy.name


DASHBOARD = "gcp:monitoring/dashboard:Dashboard"


def dashboard_tiles(plan) -> dict[str, str]:
    layout = json.loads(plan.one(DASHBOARD).inputs["dashboardJson"])
    return {t["widget"]["title"]: " ".join(d["timeSeriesQuery"].get("timeSeriesFilter", {}).get("filter", "") or d["timeSeriesQuery"]["prometheusQuery"]
                                           for d in t["widget"]["xyChart"]["dataSets"])
            for t in layout["mosaicLayout"]["tiles"]}


def test_one_dashboard_from_the_layout_file_with_the_alerts_signals(prod_plan, monitored):
    from components.monitoring import DASHBOARD_LAYOUT, render_dashboard

    tiles = dashboard_tiles(prod_plan)
    text = " ".join(tiles.values())
    assert "${" not in prod_plan.one(DASHBOARD).inputs["dashboardJson"]
    for metric in (MEMORY_PERCENT, DISK_PERCENT, PROBLEM_COUNT, "cloudsql.googleapis.com/database/cpu/utilization",
                   "cloudsql.googleapis.com/database/postgresql/num_backends", "monitoring.googleapis.com/uptime_check/check_passed",
                   "loadbalancing.googleapis.com/https/request_count"):
        assert f'metric.type = "{metric}"' in text, metric
    # The newest export's age where exports exist: the export-age alert's own filter.
    export_alert = prod_plan.by_name("monitoring-export-age").inputs["conditions"][0]["conditionThreshold"]["filter"]
    assert export_alert in tiles["Newest good Convex export: age in seconds (the alert fires above the line)"]
    # Same scoping as the alerts: the check, the VM by name, the instance, the front door's URL map.
    assert 'metric.label.instance_name = starts_with("convex-prod-vm")' in text
    assert 'resource.label.database_id = "example-convex-prod:' in text
    url_map = next(r for r in prod_plan.of_type("gcp:compute/uRLMap:URLMap") if r.inputs.get("hostRules"))
    assert f'resource.label.url_map_name = "{url_map.inputs["name"]}"' in text
    # Without a front door there is no load balancer to count requests at: those tiles are left out.
    assert not any("loadbalancing" in f for f in dashboard_tiles(monitored).values())
    assert len(dashboard_tiles(monitored)) == len(tiles) - 3
    layout = render_dashboard(DASHBOARD_LAYOUT.read_text(), {k: "1" for k in re.findall(r"\$\{([A-Z_]+)\}", DASHBOARD_LAYOUT.read_text())}, set())
    assert "_comment" not in layout and all("when" not in t for t in layout["mosaicLayout"]["tiles"])


def test_dashboard_url_is_a_stack_output():
    from components.monitoring import dashboard_url

    assert dashboard_url("projects/123/dashboards/abc-1", "p1") == "https://console.cloud.google.com/monitoring/dashboards/custom/abc-1?project=p1"


def test_plan_renders_alerts_and_dashboard_layout_as_text(prod_plan):
    from tools.plan import render_markdown

    text = render_markdown(prod_plan).split("## Monitoring", 1)[1].split("## Outputs", 1)[0]
    for policy in prod_plan.of_type(ALERT):
        assert policy.inputs["displayName"] in text
    assert "cos_containers" in text and "Dashboard `convex-prod: Convex`" in text
    assert "**VM memory in use, % (page cache excluded)**" in text


def test_convex_alerts_read_what_the_collector_writes_and_survive_a_first_deploy(prod_plan):
    from convex_gcp import runtime
    from components.monitoring import convex_metric_names

    config = dict(line.split("=", 1) for line in next(
        r for r in prod_plan.resources if isinstance(r.inputs.get("metadata"), dict) and "convex-gcp-config" in r.inputs["metadata"]
    ).inputs["metadata"]["convex-gcp-config"].splitlines() if "=" in line)
    namespace = config["METRICS_NAMESPACE"]
    queries = {}
    for key in ("convex-errors", "convex-db-wait", "convex-function-oom", "convex-metrics-missing"):
        (condition,) = prod_plan.by_name(f"monitoring-{key}").inputs["conditions"]
        promql = condition["conditionPrometheusQueryLanguage"]
        # No metric exists before the collector's first write: creation must not check for one.
        assert promql["disableMetricValidation"] is True, key
        assert f'namespace="{namespace}",job="convex-backend"' in promql["query"], key
        queries[key] = promql["query"]
    assert 'status=~"5.."' in queries["convex-errors"] and "> 0.05" in queries["convex-errors"]
    assert prod_plan.by_name("monitoring-convex-errors").inputs["severity"] == "CRITICAL"
    # Every Convex metric an alert reads is one the collector keeps.
    assert convex_metric_names() and convex_metric_names() <= set(runtime.KEEP_METRICS)
    assert all(name in " ".join(queries.values()) for name in convex_metric_names())
