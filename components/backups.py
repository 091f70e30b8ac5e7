"""DataDiskBackups: the daily snapshot schedule of the Convex data disk and its attachment.

Cloud SQL backups and point-in-time recovery belong to the Database component; this covers
the other half of a Convex deployment's state (/convex/data: files, modules, search
snapshots). docs/runbooks.md restores both to one point in time."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from convex_gcp.settings import SnapshotSettings


@dataclass
class DataDiskBackupsArgs:
    prefix: str
    region: str
    zone: str
    disk_name: pulumi.Input[str]
    snapshots: SnapshotSettings
    labels: dict[str, str]


def on_source_disk_delete(snapshots: SnapshotSettings) -> str:
    return "KEEP_AUTO_SNAPSHOTS" if snapshots.keep_on_disk_delete else "APPLY_RETENTION_POLICY"


class DataDiskBackups(pulumi.ComponentResource):
    """Owns the snapshot schedule (a regional resource policy) and its attachment to the data disk."""

    def __init__(self, name: str, args: DataDiskBackupsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("convex-gcp:index:DataDiskBackups", name, None, opts)
        snapshots = args.snapshots
        # The component's own dependencies (the project's APIs) hold for every child.
        child = pulumi.ResourceOptions(parent=self, depends_on=opts.depends_on if opts else None)
        self.policy = gcp.compute.ResourcePolicy(
            f"{name}-schedule",
            name=f"{args.prefix}-data-snapshots",
            region=args.region,
            description="Daily snapshots of the Convex data disk (/convex/data)",
            snapshot_schedule_policy=gcp.compute.ResourcePolicySnapshotSchedulePolicyArgs(
                schedule=gcp.compute.ResourcePolicySnapshotSchedulePolicyScheduleArgs(
                    daily_schedule=gcp.compute.ResourcePolicySnapshotSchedulePolicyScheduleDailyScheduleArgs(
                        days_in_cycle=1, start_time=snapshots.start_time
                    )
                ),
                retention_policy=gcp.compute.ResourcePolicySnapshotSchedulePolicyRetentionPolicyArgs(
                    max_retention_days=snapshots.retention_days,
                    on_source_disk_delete=on_source_disk_delete(snapshots),
                ),
                # Storage location unset: the multi-region nearest the disk, so a regional outage
                # does not take the snapshots with it.
                snapshot_properties=gcp.compute.ResourcePolicySnapshotSchedulePolicySnapshotPropertiesArgs(
                    labels={**args.labels, "purpose": "convex-data"},
                ),
            ),
            opts=child,
        )
        self.attachment = gcp.compute.DiskResourcePolicyAttachment(
            f"{name}-attachment",
            name=self.policy.name,
            disk=args.disk_name,
            zone=args.zone,
            opts=child,
        )
        self.register_outputs({"policy": self.policy.name, "disk": args.disk_name})
