"""Exports: the Cloud Storage bucket that receives the VM's scheduled Convex snapshot exports
(vm/convex-export.sh), the VM's right to add exports to it and nothing else, and the custom metric
the VM reports the age of the newest good export in (its alert: components/monitoring.py).

The bucket keeps every export for `exports.retentionDays` (a retention policy; Bucket Lock in prod,
which can never be shortened or removed afterwards) and a lifecycle rule deletes it the day after.
No Object Versioning: Cloud Storage does not allow it on a bucket with a retention policy; retention
and soft delete (Cloud Storage's default 7 days) protect the exports instead. The bucket is left in
place when the stack is destroyed (`retain_on_delete`): exports must outlive the deployment."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_gcp as gcp
import pulumi_random as random

from convex_gcp.runtime import export_metric_type

# The VM writes one gauge per 15-minute timer tick (vm/units/convex-export.timer).
TICK_SECONDS = 900
# The predefined Storage Object Creator, on this bucket only: it creates objects and holds no
# storage.objects.delete, get or list ("Does not give permission to view, delete, or replace objects",
# Cloud Storage IAM roles). Replacing an object needs storage.objects.delete as well ("IAM permissions
# for Cloud Storage": "to replace existing objects, both storage.objects.create and
# storage.objects.delete permissions are required"), and the VM uploads with ifGenerationMatch=0, so it
# can neither delete nor overwrite an export. A predefined role rather than a custom one: managing
# custom roles would need iam.roles.* on the project for the deployer, which IAM Conditions cannot
# narrow to one role (IAM is not among the services whose resource names conditions see), so it could
# rewrite its own roles.
WRITER_ROLE = "roles/storage.objectCreator"
# Cloud Storage's default soft-delete window: a deleted export can be restored for 7 days.
SOFT_DELETE_SECONDS = 7 * 86400


def age_filter(metric: str) -> str:
    return f'metric.type = "{metric}" AND resource.type = "gce_instance"'


def export_age_conditions(metric: str, interval_seconds: int) -> list[gcp.monitoring.AlertPolicyConditionArgs]:
    """Alert when the newest good export is older than two intervals, or when nothing reports the age
    for an hour (the timer or the VM stopped). The newest across instances (REDUCE_MIN): a replaced VM
    reports from a new instance id, with the same age (its state is on the data disk)."""
    return [
        gcp.monitoring.AlertPolicyConditionArgs(
            display_name=f"newest good export older than {2 * interval_seconds // 3600} h",
            condition_threshold=gcp.monitoring.AlertPolicyConditionConditionThresholdArgs(
                filter=age_filter(metric),
                comparison="COMPARISON_GT",
                threshold_value=2 * interval_seconds,
                duration="0s",
                aggregations=[gcp.monitoring.AlertPolicyConditionConditionThresholdAggregationArgs(
                    alignment_period=f"{2 * TICK_SECONDS}s", per_series_aligner="ALIGN_MAX",
                    cross_series_reducer="REDUCE_MIN", group_by_fields=["metric.label.bucket"],
                )],
            ),
        ),
        gcp.monitoring.AlertPolicyConditionArgs(
            display_name="no export age reported for an hour",
            condition_absent=gcp.monitoring.AlertPolicyConditionConditionAbsentArgs(
                filter=age_filter(metric), duration="3600s",
                aggregations=[gcp.monitoring.AlertPolicyConditionConditionAbsentAggregationArgs(
                    alignment_period=f"{2 * TICK_SECONDS}s", per_series_aligner="ALIGN_MAX",
                    cross_series_reducer="REDUCE_MIN", group_by_fields=["metric.label.bucket"],
                )],
            ),
        ),
    ]


@dataclass
class ExportsArgs:
    project: str
    prefix: str
    region: str
    retention_days: int
    locked: bool
    writer_email: pulumi.Input[str]  # the VM's service account
    labels: dict[str, str] = field(default_factory=dict)


class Exports(pulumi.ComponentResource):
    """Owns the exports bucket, the writer's binding on it, and the age metric's descriptor."""

    def __init__(self, name: str, args: ExportsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("convex-gcp:index:Exports", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, depends_on=opts.depends_on if opts else None)
        # Bucket names are global and a destroyed stack leaves its bucket: a suffix of its own per bucket.
        self.suffix = random.RandomString(f"{name}-suffix", length=8, special=False, upper=False, opts=pulumi.ResourceOptions(parent=self))
        retention_seconds = args.retention_days * 86400
        self.bucket = gcp.storage.Bucket(
            f"{name}-bucket",
            name=self.suffix.result.apply(lambda suffix: f"{args.prefix}-exports-{suffix}"),
            location=args.region.upper(),
            storage_class="STANDARD",
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            retention_policy=gcp.storage.BucketRetentionPolicyArgs(retention_period=retention_seconds, is_locked=args.locked),
            soft_delete_policy=gcp.storage.BucketSoftDeletePolicyArgs(retention_duration_seconds=SOFT_DELETE_SECONDS),
            versioning=gcp.storage.BucketVersioningArgs(enabled=False),
            lifecycle_rules=[gcp.storage.BucketLifecycleRuleArgs(
                action=gcp.storage.BucketLifecycleRuleActionArgs(type="Delete"),
                # Age counts whole days from creation; retention has passed by the day after.
                condition=gcp.storage.BucketLifecycleRuleConditionArgs(age=args.retention_days + 1),
            )],
            force_destroy=False,
            labels={**args.labels, "purpose": "convex-exports"},
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(retain_on_delete=True)),
        )
        self.writer = gcp.storage.BucketIAMMember(
            f"{name}-writer",
            bucket=self.bucket.name,
            role=WRITER_ROLE,
            member=pulumi.Output.from_input(args.writer_email).apply(lambda email: f"serviceAccount:{email}"),
            opts=child,
        )
        self.metric_type = export_metric_type(args.prefix)
        self.age_metric = gcp.monitoring.MetricDescriptor(
            f"{name}-age-metric",
            project=args.project,
            type=self.metric_type,
            metric_kind="GAUGE",
            value_type="DOUBLE",
            unit="s",
            display_name=f"{args.prefix}: age of the newest good Convex export",
            description="Seconds since the snapshot of the newest checked and uploaded export (vm/convex-export.sh)",
            labels=[gcp.monitoring.MetricDescriptorLabelArgs(key="bucket", value_type="STRING", description="The exports bucket")],
            opts=child,
        )
        self.register_outputs({"bucket": self.bucket.name, "metric_type": self.metric_type})
