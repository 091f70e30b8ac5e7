"""Monitoring: email notification channels, an uptime check on Convex's `/version`, and alert
policies for Cloud SQL (CPU, memory, disk, connections near max_connections), the VM being
down, and the Auth Proxy or the backend restarting in a loop. Thresholds come from
`convex-gcp:monitoring` (docs/monitoring.md)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

import pulumi
import pulumi_gcp as gcp

from components.exports import age_filter, export_age_conditions
from convex_gcp.settings import MonitoringSettings

# Where a container's output lands in Cloud Logging, by the Docker log driver its unit runs it with.
# The units (vm/units/*.service) run every container with `--log-driver json-file` and keep its stdout
# out of the journal (StandardOutput=null: a foreground `docker run` would copy it there, and COS ships
# the journal too), so Convex's logging (all on stdout) is shipped once; stderr stays in the journal. COS's logging agent (on with metadata
# google-logging-enabled=true, convex_gcp/runtime.py) tails json-file logs into log `cos_containers`,
# the container's name in jsonPayload."cos.googleapis.com/container_name" (no leading slash), the line
# in jsonPayload.message. cloud-foundation-fabric PR 977 (commit 5125a5ad0) replaced Docker's gcplogs
# driver with this agent by setting google-logging-enabled and filters on nothing itself; the log name
# and fields are the ones COS users query (e.g. `logName=projects/P/logs/cos_containers AND
# jsonPayload."cos.googleapis.com/container_name"="NAME"` in public READMEs and Terraform alerting on
# COS VMs). Not yet observed by us on a real project: `tools.acceptance gcp` restarts a container and
# waits for the alert's incident (docs/vm-runtime.md). tests/test_monitoring.py derives the driver and
# the name from each unit and fails when they disagree with this table.
@dataclass(frozen=True)
class ContainerLog:
    log_id: str
    name_field: str
    message_field: str


CONTAINER_LOGS = {
    "json-file": ContainerLog("cos_containers", 'jsonPayload."cos.googleapis.com/container_name"', "jsonPayload.message"),
}
LOG_DRIVER = "json-file"
# Lines each process prints once per start. cloud-sql-proxy: cmd/root.go. convex-backend: the first
# line of `main()` in get-convex/convex-backend crates/local_backend/src/main.rs,
# `tracing::info!("Starting a Convex backend")` in every build that can use Postgres
# (`connect_persistence`); the older SQLite-only builds said "Starting a local backend".
START_LINES = {
    "cloudsql-proxy": "The proxy has started successfully and is ready for new connections!",
    "convex-backend": "Starting a Convex backend",
}
RESTART_WINDOW = "600s"
# The upgrade guard's (vm/convex-upgrade.sh) lines when an upgrade did not go through: written to its
# unit's journal, which COS's agent ships as log cos_system (journal lines; reported by review, not yet
# observed by us, like cos_containers above). tests/vm/test_upgrade.py ties each to the script's text.
UPGRADE_LINES = ("convex-gcp[upgrade]: ROLLBACK:", "NOT returning to")

# The VM's own metrics come from COS's node-problem-detector, on with metadata
# google-monitoring-enabled=true (convex_gcp/runtime.py; COS docs "Monitoring system health with the
# node problem detector", milestone 88+). Its stackdriver exporter (kubernetes/node-problem-detector
# pkg/exporters/stackdriver/stackdriver_exporter.go NPDMetricToSDMetric) writes these built-in types
# on resource gce_instance with the metric label instance_name; predefined types, so the alert
# policies never 404 on a fresh project:
GUEST = "compute.googleapis.com/guest/"
# memory/percent_used{state="used"}: (MemTotal-MemFree-Buffers-Cached-Slab)/MemTotal*100
# (pkg/systemstatsmonitor/memory_collector_unix.go): page cache does not count.
MEMORY_PERCENT = GUEST + "memory/percent_used"
# disk/percent_used{device_name,fs_type,mount_option,state="used"}: per mounted device, gopsutil's
# UsedPercent, 0..100 (disk_collector.go); device_name is the device in /proc/mounts without /dev/.
DISK_PERCENT = GUEST + "disk/percent_used"
# system/problem_count{reason}: counts kernel-monitor events; "OOMKilling" is the kernel's "Killed
# process ... total-vm" line (config/kernel-monitor.json), i.e. the OOM killer ended a process.
PROBLEM_COUNT = GUEST + "system/problem_count"
# Which block device is which disk: the boot disk is the first attached, the data disk the second
# (components/convex_vm.py); COS mounts the boot disk's partition 1 (STATE: /var with Docker's
# images and json-file logs) read-write. SCSI names on most machine types, NVMe on the rest.
BOOT_DISK_DEVICES = ("sda1", "nvme0n1p1")
DATA_DISK_DEVICES = ("sdb", "nvme0n2")


# Convex's own metrics, as the collector on the VM writes them (vm/units/convex-collector.service:
# Managed Service for Prometheus, resource label namespace = the stack's prefix, job convex-backend;
# names after vm/convex-metrics.sh's rewrite, families from the pinned backend: tests/fakes/convex_metrics.py).
# PromQL conditions check at creation that the metric exists, which it cannot on a first deploy:
# disable_metric_validation ("allows alerting policies to be defined on metrics that do not yet
# exist", pulumi-gcp 10.2.0 AlertPolicyConditionConditionPrometheusQueryLanguage) turns that off.
def convex_queries(namespace: str, error_ratio: float) -> dict[str, str]:
    sel = f'namespace="{namespace}",job="convex-backend"'
    return {
        # crates/common/src/http/mod.rs HTTP_HANDLE_DURATION_SECONDS, label status = the HTTP code.
        "convex-errors": (f'sum(rate(http_handle_duration_seconds_count_total{{{sel},status=~"5.."}}[5m])) '
                          f'/ sum(rate(http_handle_duration_seconds_count_total{{{sel}}}[5m])) > {error_ratio}'),
        # crates/postgres/src/metrics.rs POSTGRES_GET_CONNECTION_SECONDS: waiting for a pooled connection.
        "convex-db-wait": (f'sum(rate(postgres_get_connection_seconds_sum_total{{{sel}}}[5m])) '
                           f'/ sum(rate(postgres_get_connection_seconds_count_total{{{sel}}}[5m])) > 1'),
        # crates/isolate/src/metrics.rs ISOLATE_OUT_OF_MEMORY_TOTAL: a function hit V8's heap limit.
        "convex-function-oom": f"increase(isolate_out_of_memory_total{{{sel}}}[10m]) > 0",
        # The prometheus receiver's own `up` per scrape: 0 when the rewrite or the backend failed.
        "convex-metrics-missing": (f"absent_over_time(up{{{sel}}}[15m]) or avg_over_time(up{{{sel}}}[10m]) < 0.5"),
    }


def convex_metric_names() -> set[str]:
    """The Convex metric names the alerts read (the collector must keep, the rewrite must produce)."""
    return {name for query in convex_queries("n", 0.05).values()
            for name in re.findall(r"\b([a-z][a-z0-9_]*_total)\{", query)}


DASHBOARD_LAYOUT = Path(__file__).resolve().parent / "dashboard.json"
_PLACEHOLDER = re.compile(r"\$\{([A-Z_]+)\}")


def render_dashboard(layout_text: str, values: dict[str, str], features: set[str]) -> dict[str, Any]:
    """The stack's dashboard from components/dashboard.json: placeholders filled, tiles whose `when`
    feature the stack lacks dropped, the layout's own keys (`_comment`, `when`) removed."""
    missing = sorted(set(_PLACEHOLDER.findall(layout_text)) - set(values))
    if missing:
        raise ValueError(f"dashboard.json: no value for {missing}")
    # Values go into JSON strings and numbers: escape them as JSON string content.
    text = _PLACEHOLDER.sub(lambda m: json.dumps(str(values[m.group(1)]))[1:-1], layout_text)
    layout = json.loads(text)
    layout.pop("_comment", None)
    tiles = []
    for tile in layout["mosaicLayout"]["tiles"]:
        when = tile.pop("when", None)
        if when is None or when in features:
            tiles.append(tile)
    layout["mosaicLayout"]["tiles"] = tiles
    return layout


def dashboard_url(dashboard_id: str, project: str) -> str:
    """Console URL of a dashboard from its resource id (projects/N/dashboards/ID)."""
    return f"https://console.cloud.google.com/monitoring/dashboards/custom/{dashboard_id.rsplit('/', 1)[-1]}?project={project}"


def guest_filter(metric: str, vm_name: str, extra: str = "") -> str:
    # The VM by name prefix: a recreated VM keeps its name (or, in a group, its base name).
    return (f'resource.type = "gce_instance" AND metric.type = "{metric}" '
            f'AND metric.label.instance_name = starts_with("{vm_name}")' + (f" AND {extra}" if extra else ""))


def one_of(values: tuple[str, ...]) -> str:
    return "one_of(" + ", ".join(f'"{v}"' for v in values) + ")"


def uptime_target(convex_url: str) -> dict[str, Any]:
    """Host, port, TLS and path of the uptime check for a Convex URL (`http://ip:3210` or an HTTPS host)."""
    parts = urlsplit(convex_url)
    use_ssl = parts.scheme == "https"
    return {
        "host": parts.hostname or "",
        "port": parts.port or (443 if use_ssl else 80),
        "use_ssl": use_ssl,
        "path": parts.path.rstrip("/") + "/version",
    }


def connections_threshold(max_connections: int, ratio: float) -> int:
    return max(1, math.floor(max_connections * ratio))


def sql_filter(metric: str, database_id: str) -> str:
    return f'resource.type = "cloudsql_database" AND resource.label.database_id = "{database_id}" AND metric.type = "cloudsql.googleapis.com/database/{metric}"'


def start_log_filter(project: str, container: str, vm_name: str, driver: str = LOG_DRIVER) -> str:
    """Log-match filter for one start of `container` on the stack's VM. The VM by the name label the
    logging agent attaches (its instance id changes when the VM is recreated; the name prefix does not)."""
    log = CONTAINER_LOGS[driver]
    return (
        f'logName="projects/{project}/logs/{log.log_id}" AND resource.type="gce_instance" '
        f'AND labels."compute.googleapis.com/resource_name":"{vm_name}" AND {log.name_field}="{container}" '
        # A bare string matches any field: the line is jsonPayload.message as printed, or inside it when
        # the agent parses a JSON line (the proxy's --structured-logs, Convex's LOG_FORMAT=json).
        f'AND "{START_LINES[container]}"'
    )


def upgrade_log_filter(project: str, vm_name: str) -> str:
    """Log-match filter for an upgrade the VM rolled back, or one it could not (a migration began)."""
    lines = " OR ".join(f'"{line}"' for line in UPGRADE_LINES)
    return (f'logName="projects/{project}/logs/cos_system" AND resource.type="gce_instance" '
            f'AND labels."compute.googleapis.com/resource_name":"{vm_name}" AND ({lines})')


@dataclass
class MonitoringArgs:
    project: str
    prefix: str
    labels: dict[str, str]
    settings: MonitoringSettings
    convex_url: pulumi.Input[str]
    sql_database_id: pulumi.Input[str]  # project:instance, Cloud SQL's monitored-resource label
    vm_name: pulumi.Input[str]
    max_connections: int
    # The front door's URL map (with a domain): the dashboard's request and error tiles.
    url_map_name: Optional[pulumi.Input[str]] = None
    # Scheduled exports (components/exports.py): the age metric's type, the export interval in seconds and
    # its descriptor (the policy is created after it).
    export_age: Optional[tuple[str, int, pulumi.Resource]] = None


class Monitoring(pulumi.ComponentResource):
    """Owns the notification channels, the uptime check and the alert policies (log-match for restarts)."""

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("convex-gcp:index:Monitoring", name, None, opts)
        m = args.settings
        # The component's own dependencies (the project's APIs) hold for every child.
        child = pulumi.ResourceOptions(parent=self, depends_on=opts.depends_on if opts else None)
        labels = args.labels

        self.channels = [
            gcp.monitoring.NotificationChannel(
                f"{name}-email-{index}",
                display_name=f"{args.prefix}: {email}",
                type="email",
                labels={"email_address": email},
                user_labels=labels,
                opts=child,
            )
            for index, email in enumerate(m.notification_emails)
        ]
        channel_ids = [channel.name for channel in self.channels]

        target = pulumi.Output.from_input(args.convex_url).apply(uptime_target)
        self.uptime_check = gcp.monitoring.UptimeCheckConfig(
            f"{name}-uptime",
            display_name=f"{args.prefix} Convex /version",
            period=f"{m.uptime_period_seconds}s",
            timeout="10s",
            http_check=gcp.monitoring.UptimeCheckConfigHttpCheckArgs(
                path=target["path"],
                port=target["port"],
                use_ssl=target["use_ssl"],
                validate_ssl=target["use_ssl"],
                request_method="GET",
                accepted_response_status_codes=[
                    gcp.monitoring.UptimeCheckConfigHttpCheckAcceptedResponseStatusCodeArgs(status_class="STATUS_CLASS_2XX")
                ],
            ),
            monitored_resource=gcp.monitoring.UptimeCheckConfigMonitoredResourceArgs(
                type="uptime_url", labels={"project_id": args.project, "host": target["host"]}
            ),
            user_labels=labels,
            opts=child,
        )

        duration = f"{m.alert_after_seconds}s"

        def policy(key: str, title: str, condition: gcp.monitoring.AlertPolicyConditionArgs, fix: str, severity: str = "WARNING",
                   strategy: gcp.monitoring.AlertPolicyAlertStrategyArgs | None = None) -> gcp.monitoring.AlertPolicy:
            return gcp.monitoring.AlertPolicy(
                f"{name}-{key}",
                display_name=f"{args.prefix}: {title}",
                combiner="OR",
                conditions=[condition],
                notification_channels=channel_ids,
                severity=severity,
                documentation=gcp.monitoring.AlertPolicyDocumentationArgs(
                    mime_type="text/markdown",
                    content=f"{fix}\n\nDiagnose with `python -m tools.doctor <stack>`; runbooks in docs/runbooks.md.",
                ),
                alert_strategy=strategy or gcp.monitoring.AlertPolicyAlertStrategyArgs(auto_close="86400s"),
                user_labels=labels,
                opts=child,
            )

        def mean(period: str = "300s") -> list[gcp.monitoring.AlertPolicyConditionConditionThresholdAggregationArgs]:
            return [gcp.monitoring.AlertPolicyConditionConditionThresholdAggregationArgs(alignment_period=period, per_series_aligner="ALIGN_MEAN")]

        def summed_per_instance() -> list[gcp.monitoring.AlertPolicyConditionConditionThresholdAggregationArgs]:
            # num_backends has one series per database (metric.label.database); max_connections is the
            # instance's, so compare the instance's sum.
            return [gcp.monitoring.AlertPolicyConditionConditionThresholdAggregationArgs(
                alignment_period="300s", per_series_aligner="ALIGN_MEAN", cross_series_reducer="REDUCE_SUM",
                group_by_fields=["resource.label.database_id"],
            )]

        def sql_threshold(key: str, metric: str, title: str, value: float, fix: str, summed: bool = False) -> gcp.monitoring.AlertPolicy:
            condition = gcp.monitoring.AlertPolicyConditionArgs(
                display_name=title,
                condition_threshold=gcp.monitoring.AlertPolicyConditionConditionThresholdArgs(
                    filter=pulumi.Output.from_input(args.sql_database_id).apply(lambda db: sql_filter(metric, db)),
                    comparison="COMPARISON_GT",
                    threshold_value=value,
                    duration=duration,
                    aggregations=summed_per_instance() if summed else mean(),
                ),
            )
            return policy(key, title, condition, fix)

        self.policies = {
            "sql-cpu": sql_threshold("sql-cpu", "cpu/utilization", f"Cloud SQL CPU above {m.sql_cpu_utilization:.0%}", m.sql_cpu_utilization,
                                     "Find slow queries in Query Insights; resize the tier (docs/runbooks.md, 'Resize the database tier')."),
            "sql-memory": sql_threshold("sql-memory", "memory/utilization", f"Cloud SQL memory above {m.sql_memory_utilization:.0%}", m.sql_memory_utilization,
                                        "Lower the Convex pool or shared_buffers, or resize the tier (docs/runbooks.md)."),
            "sql-disk": sql_threshold("sql-disk", "disk/utilization", f"Cloud SQL disk above {m.sql_disk_utilization:.0%}", m.sql_disk_utilization,
                                      "Storage auto-increase is on; check its limit and what grows (DOCUMENT_RETENTION_DELAY, exports)."),
            "sql-connections": sql_threshold(
                "sql-connections", "postgresql/num_backends",
                f"Cloud SQL connections above {connections_threshold(args.max_connections, m.sql_connections_ratio)} of max_connections {args.max_connections}",
                connections_threshold(args.max_connections, m.sql_connections_ratio),
                "The Convex pool (convex.poolSize) plus other clients approach max_connections; the doctor's 'pool fits' check shows the numbers.",
                summed=True,
            ),
        }

        uptime_filter = self.uptime_check.uptime_check_id.apply(
            lambda cid: f'resource.type = "uptime_url" AND metric.type = "monitoring.googleapis.com/uptime_check/check_passed" AND metric.label.check_id = "{cid}"'
        )
        self.policies["convex-down"] = policy(
            "convex-down",
            "Convex /version failing",
            gcp.monitoring.AlertPolicyConditionArgs(
                display_name="uptime check failing",
                condition_threshold=gcp.monitoring.AlertPolicyConditionConditionThresholdArgs(
                    filter=uptime_filter,
                    comparison="COMPARISON_GT",
                    threshold_value=1,
                    duration=duration,
                    trigger=gcp.monitoring.AlertPolicyConditionConditionThresholdTriggerArgs(count=1),
                    # Alert when more than one checker region fails, not on one flaky probe.
                    aggregations=[
                        gcp.monitoring.AlertPolicyConditionConditionThresholdAggregationArgs(
                            alignment_period="1200s",
                            per_series_aligner="ALIGN_NEXT_OLDER",
                            cross_series_reducer="REDUCE_COUNT_FALSE",
                            group_by_fields=["resource.label.*"],
                        )
                    ],
                ),
            ),
            "Run the doctor; check the VM (docs/runbooks.md, 'Recover the VM') and the firewall's apiSourceRanges (uptime checkers must be allowed).",
            severity="CRITICAL",
        )
        # The VM's name survives its recreation by the group (docs/updates.md); its instance id does not.
        vm_filter = pulumi.Output.from_input(args.vm_name).apply(
            lambda vm: f'resource.type = "gce_instance" AND metric.label.instance_name = "{vm}" AND metric.type = "compute.googleapis.com/instance/uptime"'
        )
        self.policies["vm-down"] = policy(
            "vm-down",
            "Convex VM down",
            gcp.monitoring.AlertPolicyConditionArgs(
                display_name="no uptime reported by the VM",
                condition_absent=gcp.monitoring.AlertPolicyConditionConditionAbsentArgs(
                    filter=vm_filter, duration=f"{max(120, m.alert_after_seconds)}s", aggregations=mean("60s"),
                ),
            ),
            "The VM stopped or was deleted: docs/runbooks.md, 'Recover the VM'.",
            severity="CRITICAL",
        )
        # Log-match conditions: no log-based metric has to exist first, so the policies are created on the
        # first deploy (an alert on a new log-based metric 404s for up to ~10 minutes,
        # terraform-provider-google #11102). A log-match condition fires per matching entry and cannot count,
        # so a start notifies at most once per window: a deploy notifies once, a crash loop every window.
        for container in START_LINES:
            start_filter = pulumi.Output.from_input(args.vm_name).apply(lambda vm, c=container: start_log_filter(args.project, c, vm))
            self.policies[f"{container}-restarts"] = policy(
                f"{container}-restarts",
                f"{container} (re)started",
                gcp.monitoring.AlertPolicyConditionArgs(
                    display_name=f"{container} printed its start line",
                    condition_matched_log=gcp.monitoring.AlertPolicyConditionConditionMatchedLogArgs(filter=start_filter),
                ),
                f"Expected once after a deploy or a VM replacement. Repeated notifications mean a crash loop: read the {container} "
                f"container's logs (Logs Explorer: log {CONTAINER_LOGS[LOG_DRIVER].log_id}, {CONTAINER_LOGS[LOG_DRIVER].name_field}=\"{container}\"; "
                f"on the VM `docker logs {container}`); run the doctor.",
                strategy=gcp.monitoring.AlertPolicyAlertStrategyArgs(
                    # Required for log-match conditions; one notification per window.
                    notification_rate_limit=gcp.monitoring.AlertPolicyAlertStrategyNotificationRateLimitArgs(period=RESTART_WINDOW),
                    auto_close="1800s",
                ),
            )

        upgrade_filter = pulumi.Output.from_input(args.vm_name).apply(lambda vm: upgrade_log_filter(args.project, vm))
        self.policies["upgrade"] = policy(
            "upgrade",
            "Convex upgrade rolled back or stuck",
            gcp.monitoring.AlertPolicyConditionArgs(
                display_name="the upgrade guard gave up on the new backend",
                condition_matched_log=gcp.monitoring.AlertPolicyConditionConditionMatchedLogArgs(filter=upgrade_filter),
            ),
            "A new Convex image never answered /version. `ROLLBACK`: no migration began and the VM runs the previous "
            "images again; pin the previous SHA (or a fixed one) in the stack file. `NOT returning to`: a migration "
            "may have run; do not pin the old SHA alone: fix forward or restore the copies the deploy named "
            "(docs/runbooks.md, 'Upgrade Convex'; on the VM `journalctl -u convex-upgrade`).",
            severity="ERROR",
            strategy=gcp.monitoring.AlertPolicyAlertStrategyArgs(
                notification_rate_limit=gcp.monitoring.AlertPolicyAlertStrategyNotificationRateLimitArgs(period=RESTART_WINDOW),
                auto_close="86400s",
            ),
        )

        def guest_threshold(key: str, title: str, metric: str, extra: str, value: float, fix: str, severity: str = "WARNING") -> gcp.monitoring.AlertPolicy:
            return policy(key, title, gcp.monitoring.AlertPolicyConditionArgs(
                display_name=title,
                condition_threshold=gcp.monitoring.AlertPolicyConditionConditionThresholdArgs(
                    filter=pulumi.Output.from_input(args.vm_name).apply(lambda vm: guest_filter(metric, vm, extra)),
                    comparison="COMPARISON_GT",
                    threshold_value=value,
                    duration=duration,
                    aggregations=mean(),
                ),
            ), fix, severity)

        self.policies["vm-memory"] = guest_threshold(
            "vm-memory", f"VM memory above {m.vm_memory_utilization:.0%}", MEMORY_PERCENT, 'metric.label.state = "used"',
            round(m.vm_memory_utilization * 100, 2),
            "Memory in use (page cache excluded) is close to the machine's. Convex grows with open sync sessions, "
            "function concurrency and isolate heaps; the kernel will kill the largest process next (usually "
            "convex-backend). See which container grows: `sudo docker stats --no-stream` on the VM. Fix: a larger "
            "machine type (`pulumi config set --path convex-gcp:vm.machineType e2-standard-4 && pulumi up`, "
            "replaces the VM, data disk kept).",
        )
        oom_title = "A process on the VM was OOM-killed"
        self.policies["vm-oom"] = policy("vm-oom", oom_title, gcp.monitoring.AlertPolicyConditionArgs(
            display_name=oom_title,
            condition_threshold=gcp.monitoring.AlertPolicyConditionConditionThresholdArgs(
                filter=pulumi.Output.from_input(args.vm_name).apply(lambda vm: guest_filter(PROBLEM_COUNT, vm, 'metric.label.reason = "OOMKilling"')),
                comparison="COMPARISON_GT",
                threshold_value=0,
                duration="0s",
                aggregations=[gcp.monitoring.AlertPolicyConditionConditionThresholdAggregationArgs(
                    alignment_period="300s", per_series_aligner="ALIGN_DELTA")],
            ),
        ), "The kernel's OOM killer ended a process (kernel log: 'Killed process N (name)'). If it was convex-backend, "
           "systemd restarted it (the restart alert fires too) and in-flight requests failed. Find it: `sudo dmesg | grep -i "
           "'killed process'` and `systemctl status convex-backend` on the VM. Fix: a larger machine type "
           "(convex-gcp:vm.machineType), or find the function that allocates (Convex dashboard, Logs).", severity="CRITICAL")
        self.policies["vm-data-disk"] = guest_threshold(
            "vm-data-disk", f"Data disk above {m.vm_disk_utilization:.0%}", DISK_PERCENT,
            f"metric.label.device_name = {one_of(DATA_DISK_DEVICES)}", round(m.vm_disk_utilization * 100, 2),
            "The data disk (/mnt/disks/convex-data, Convex's /convex/data: file storage, pushed modules, search "
            "indexes, exports) is filling. When it is full the backend's writes fail: file uploads, deploys and "
            "exports error until space is freed. Check `sudo du -sh /mnt/disks/convex-data/convex/*` on the VM. "
            "Fix: grow it online (`pulumi config set --path convex-gcp:vm.dataDiskSizeGb <GB> && pulumi up`; the VM "
            "runs resize2fs at its next boot or config change), or delete old exports/files.",
            severity="CRITICAL",
        )
        self.policies["vm-boot-disk"] = guest_threshold(
            "vm-boot-disk", f"Boot disk above {m.vm_disk_utilization:.0%}", DISK_PERCENT,
            f"metric.label.device_name = {one_of(BOOT_DISK_DEVICES)}", round(m.vm_disk_utilization * 100, 2),
            "The boot disk's writable partition (/var: Docker images and container logs) is filling. A full one "
            "stops image pulls (upgrades) and container starts. Check `sudo docker system df` on the VM. Fix: "
            "`sudo docker image prune -a` for images no unit uses, or a larger boot disk "
            "(convex-gcp:vm.bootDiskSizeGb; replaces the VM, data disk kept).",
        )

        namespace = f"{args.prefix}"
        queries = convex_queries(namespace, m.convex_error_ratio)
        convex_alerts = {
            "convex-errors": ("CRITICAL", f"Convex answering 5xx to more than {m.convex_error_ratio:.0%} of requests",
                              "Users' requests are failing (HTTP 5xx from the backend itself, before any load balancer). Look at "
                              "the backend's errors: Logs Explorer, log cos_containers, container convex-backend, severity>=ERROR. "
                              "Usual causes: the database (Cloud SQL alerts, `python -m tools.doctor <stack>` 'pool fits'), "
                              "a full data disk, a bad deploy of functions (roll back with `npx convex deploy` of the previous version)."),
            "convex-db-wait": ("WARNING", "Convex waits more than 1 s for a database connection",
                               "Requests queue for a pooled Postgres connection: the pool (convex.poolSize = "
                               "POSTGRES_MAX_CONNECTIONS) is exhausted or Cloud SQL is slow. Check Cloud SQL CPU and "
                               "connections on the dashboard; raise `convex.poolSize` within max_connections or the tier "
                               "(docs/runbooks.md, 'Resize the database tier')."),
            "convex-function-oom": ("WARNING", "A Convex function ran out of memory",
                                    "A query, mutation or action hit the isolate's heap limit and failed for its caller. Find it in "
                                    "the Convex dashboard's logs; fix the function (smaller batches, pagination). The VM itself "
                                    "is not out of memory (that is the 'VM memory' alert)."),
            "convex-metrics-missing": ("WARNING", "Convex metrics are not arriving",
                                       "The collector on the VM has not scraped Convex for 10 minutes, so the Convex alerts above "
                                       "cannot fire. On the VM: `systemctl status convex-metrics convex-collector`, "
                                       "`curl -s localhost:9464/metrics | head` (the rewrite; a 502 means the backend's /metrics "
                                       "did not answer), `sudo docker logs convex-collector` (permission errors: the VM's service "
                                       "account needs roles/monitoring.metricWriter)."),
        }
        for key, (severity, title, fix) in convex_alerts.items():
            self.policies[key] = policy(key, title, gcp.monitoring.AlertPolicyConditionArgs(
                display_name=title,
                condition_prometheus_query_language=gcp.monitoring.AlertPolicyConditionConditionPrometheusQueryLanguageArgs(
                    query=queries[key],
                    duration="0s" if key == "convex-function-oom" else duration,
                    evaluation_interval="60s",
                    disable_metric_validation=True,
                ),
            ), fix, severity)

        features = ({"front_door"} if args.url_map_name is not None else set()) | ({"exports"} if args.export_age is not None else set())
        export_filter, export_threshold = (age_filter(args.export_age[0]), str(2 * args.export_age[1])) if args.export_age else ("", "0")
        values = pulumi.Output.all(
            uptime=self.uptime_check.uptime_check_id, vm=args.vm_name, db=args.sql_database_id,
            url_map=args.url_map_name if args.url_map_name is not None else "",
        ).apply(lambda v: json.dumps(render_dashboard(DASHBOARD_LAYOUT.read_text(), {
            "PREFIX": args.prefix, "UPTIME_CHECK_ID": v["uptime"], "VM_NAME": v["vm"], "DATABASE_ID": v["db"],
            "URL_MAP": v["url_map"], "MAX_CONNECTIONS": str(args.max_connections), "NAMESPACE": namespace,
            "EXPORT_AGE_FILTER": export_filter, "EXPORT_AGE_THRESHOLD": export_threshold,
            "MEMORY_THRESHOLD": str(round(m.vm_memory_utilization * 100, 2)),
            "DISK_THRESHOLD": str(round(m.vm_disk_utilization * 100, 2)),
            "CONNECTIONS_THRESHOLD": str(connections_threshold(args.max_connections, m.sql_connections_ratio)),
        }, features), sort_keys=True))
        self.dashboard = gcp.monitoring.Dashboard(f"{name}-dashboard", dashboard_json=values, opts=child)
        self.dashboard_url = self.dashboard.id.apply(lambda i: dashboard_url(i, args.project))
        if args.export_age is not None:
            metric, interval, descriptor = args.export_age
            self.policies["export-age"] = gcp.monitoring.AlertPolicy(
                f"{name}-export-age",
                display_name=f"{args.prefix}: Convex exports late",
                combiner="OR",
                conditions=export_age_conditions(metric, interval),
                notification_channels=channel_ids,
                severity="ERROR",
                documentation=gcp.monitoring.AlertPolicyDocumentationArgs(
                    mime_type="text/markdown",
                    content="The newest good Convex export is older than two export intervals, or the VM stopped reporting its age: "
                            "a restore now would lose more than the schedule promises. On the VM, `journalctl -u convex-export` "
                            "(Logs Explorer: log cos_system) shows a `convex-export: result=failed reason=...` line saying why; "
                            "docs/runbooks.md, 'Exports are late'. Diagnose the backend with `python -m tools.doctor <stack>`.",
                ),
                alert_strategy=gcp.monitoring.AlertPolicyAlertStrategyArgs(auto_close="86400s"),
                user_labels=labels,
                opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[descriptor])),
            )

        self.register_outputs(
            {
                "dashboard_url": self.dashboard_url,
                "uptime_check": self.uptime_check.uptime_check_id,
                "channels": channel_ids,
                "policies": [p.name for p in self.policies.values()],
            }
        )
