"""The whole Google Cloud deployment as one component: owns the APIs, the network, the identity and
secrets, the database, the VM, and (when configured) the private DNS record, the front door, the data
disk's snapshot schedule and the monitoring. Other teams' programs instantiate this, from Python or,
through the component package (PulumiPlugin.yaml, convex_gcp/provider_host.py), from any Pulumi
language; `__main__.py` only reads the stack's config and does the same."""

# No `from __future__ import annotations`: the SDK's schema analyzer reads these annotations as types.
from typing import Any, Optional

import pulumi

from components.apis import ProjectApis, ProjectApisArgs, required_apis
from components.backups import DataDiskBackups, DataDiskBackupsArgs
from components.convex_vm import ConvexVm, ConvexVmArgs
from components.database import Database, DatabaseArgs
from components.exports import Exports, ExportsArgs
from components.front_door import FrontDoor, FrontDoorArgs
from components.identity import Identity, IdentityArgs
from components.monitoring import Monitoring, MonitoringArgs
from components.network import VM_TAG, Network, NetworkArgs
from components.private_dns import PrivateDns, PrivateDnsArgs
from convex_gcp.adoption import import_ids
from convex_gcp.package_args import ConvexOnGcpArgs, to_config
from convex_gcp.placement import PulumiLookup
from convex_gcp.runtime import API_PORT, DASHBOARD_PORT, HEALTH_PORT, SITE_PORT
from convex_gcp.settings import (
    GOOGLE_LB_RANGES,
    IAP_RANGE,
    ConfigError,
    Settings,
    load_settings,
    resource_prefix,
    settings_warnings,
)


def settings_of(args: Any) -> Settings:
    """Validate the args as `pulumi up` validates a stack's config (same rules, same messages); raise
    pulumi.RunError naming every problem. The stack name defaults to the running stack's."""
    config, stack = to_config(args)
    try:
        return load_settings(config, stack or pulumi.get_stack(), lookup=PulumiLookup())
    except ConfigError as error:
        raise pulumi.RunError(str(error)) from None


class ConvexOnGcp(pulumi.ComponentResource):
    """A Convex self-hosted backend on Google Cloud: owns the APIs, network, identity and secrets,
    Cloud SQL for PostgreSQL, the VM and, as configured, the private DNS record, the HTTPS front door,
    the data disk's snapshots and the monitoring. Its outputs are the outputs contract (docs/outputs.md)."""

    convex_url: pulumi.Output[str]
    """Convex API and sync URL (CONVEX_SELF_HOSTED_URL; dev without a domain: the IAP tunnel's local end)."""
    convex_site_url: pulumi.Output[str]
    """URL of HTTP actions (the site origin)."""
    dashboard_url: Optional[pulumi.Output[str]]
    """Dashboard URL, when convex.dashboard is true."""
    admin_key_secret: pulumi.Output[str]
    """Secret Manager id of the admin key (the id, never the value)."""
    sql_instance_name: pulumi.Output[str]
    """Cloud SQL instance name."""
    sql_connection_name: pulumi.Output[str]
    """Cloud SQL connection name, project:region:instance."""
    sql_private_ip: pulumi.Output[str]
    """Private IP of the Cloud SQL instance."""
    database_name: pulumi.Output[str]
    """The Convex database (INSTANCE_NAME with - replaced by _)."""
    database_user: pulumi.Output[str]
    """The database user Convex logs in as."""
    vm_name: pulumi.Output[str]
    """The VM's name."""
    vm_zone: pulumi.Output[str]
    """The VM's zone."""
    vm_internal_ip: pulumi.Output[str]
    """The VM's internal IP (reserved: kept through every recreation)."""
    vm_group: pulumi.Output[str]
    """The zonal managed instance group (of one) that owns the VM."""
    vm_service_account: pulumi.Output[str]
    """The VM's service account email."""
    network: pulumi.Output[str]
    """The VPC network's name."""
    subnetwork: pulumi.Output[str]
    """The subnetwork's name."""
    peering_range: pulumi.Output[str]
    """The private services access range's name."""
    connection_mode: pulumi.Output[str]
    """proxy, ssl or plaintext."""
    front_door_ip: Optional[pulumi.Output[str]]
    """The HTTPS load balancer's IP, when a domain is set."""
    monitoring_dashboard_url: Optional[pulumi.Output[str]]
    """The stack's Cloud Monitoring dashboard, when monitoring is enabled."""
    exports_bucket: Optional[pulumi.Output[str]]
    """The Cloud Storage bucket of the scheduled Convex exports, when exports are enabled."""

    def __init__(self, name: str, args: ConvexOnGcpArgs, opts: Optional[pulumi.ResourceOptions] = None):
        # Validated before the component registers: a bad setting declares nothing at all.
        settings = settings_of(args)
        super().__init__("convex-gcp:index:ConvexOnGcp", name, None, opts)
        for warning in settings_warnings(settings):
            pulumi.log.warn(warning, resource=self)
        prefix = resource_prefix(settings.stack)
        domain = settings.domain

        def child(depends_on=None) -> pulumi.ResourceOptions:
            # These components were declared at the stack's root before this one existed: the alias keeps
            # their URNs (and their children's, which the engine derives from the parent's aliases), so an
            # existing stack sees no replacement (pulumi/pulumi step_generator.go generateAliases).
            return pulumi.ResourceOptions(parent=self, aliases=[pulumi.Alias(parent=pulumi.ROOT_STACK_RESOURCE)], depends_on=depends_on)

        apis = ProjectApis(
            "apis",
            ProjectApisArgs(project=settings.project, apis=required_apis(settings.connection_mode, bool(domain and domain.managed_zone))),
            opts=child(),
        )

        network = Network(
            "network",
            NetworkArgs(
                prefix=prefix,
                region=settings.region,
                subnet_cidr=settings.network.subnet_cidr,
                private_services_prefix_length=settings.network.private_services_prefix_length,
                api_source_ranges=settings.network.api_source_ranges,
                dashboard_source_ranges=settings.network.dashboard_source_ranges if settings.convex.dashboard else [],
                ssh_source_ranges=settings.network.ssh_source_ranges,
                iap_range=IAP_RANGE,
                iap_ports=[22, DASHBOARD_PORT] if settings.convex.dashboard else [22],
                is_prod=settings.is_prod,
                existing_network=settings.network.existing_network,
                existing_subnetwork=settings.network.existing_subnetwork,
                peering_range_name=settings.adopt.peering_range,
                peering_range_import_id=import_ids(settings)["peering_range"],
                connection_import_id=import_ids(settings)["peering_connection"],
                load_balancer_ranges=list(GOOGLE_LB_RANGES) if domain else [],
                load_balancer_ports=([API_PORT, SITE_PORT] + ([DASHBOARD_PORT] if domain.dashboard_host else [])) if domain else [],
                health_check_ranges=list(GOOGLE_LB_RANGES),
                health_check_port=HEALTH_PORT,
                depends_on=apis.services,
            ),
            opts=child(),
        )

        identity = Identity(
            "identity",
            IdentityArgs(
                prefix=prefix,
                project=settings.project,
                region=settings.region,
                iam_auth=settings.iam_auth,
                labels=settings.labels,
                sql_admin=settings.connection_mode != "plaintext",
                list_server_cas=settings.connection_mode == "ssl",
                protect_instance_secret=settings.protects("instanceSecret"),
                depends_on=apis.services,
            ),
            opts=child(),
        )

        database = Database(
            "database",
            DatabaseArgs(
                settings=settings,
                prefix=prefix,
                private_network=network.network_id,
                service_networking_connection=network.connection,
                service_account_email=identity.service_account.email,
                db_password=identity.db_password,
                grant_account_email=identity.grant_account.email if identity.grant_account else None,
                allocated_ip_range=network.peering_range.name,
                depends_on=apis.services,
            ),
            opts=child(),
        )

        # The VM's Cloud SQL roles, conditioned on this instance; the VM boots after them.
        identity.bind_sql_instance(database.instance_name)

        private_dns = None
        if settings.connection_mode == "ssl":
            private_dns = PrivateDns(
                "sql-dns",
                PrivateDnsArgs(
                    prefix=prefix,
                    network=network.network_id,
                    dns_name=database.private_dns_name,
                    private_ip=database.instance.private_ip_address,
                    labels=settings.labels,
                    depends_on=apis.services,
                ),
                opts=child(),
            )

        exports = None
        if settings.exports.enabled:
            exports = Exports(
                "exports",
                ExportsArgs(
                    project=settings.project,
                    prefix=prefix,
                    region=settings.region,
                    retention_days=settings.export_retention_days,
                    locked=settings.export_locked,
                    writer_email=identity.service_account.email,
                    labels=settings.labels,
                ),
                opts=child(depends_on=apis.services),
            )

        vm = ConvexVm(
            "convex",
            ConvexVmArgs(
                settings=settings,
                prefix=prefix,
                subnetwork=network.subnetwork_id,
                network_tag=VM_TAG,
                service_account_email=identity.service_account.email,
                # Computed from inputs: in proxy mode the VM boots and pulls while Cloud SQL is created, and its
                # boot path waits for the database (tools/critical_path.py).
                connection_name=database.connection_name,
                database_user=database.user_name,
                instance_secret_id=identity.instance_secret.id,
                admin_key_secret_id=identity.admin_key.id,
                db_password_secret_id=identity.db_password_secret.id if identity.db_password_secret else "",
                sql_dns_name=database.private_dns_name if settings.connection_mode == "ssl" else "",
                sql_private_ip=database.instance.private_ip_address if settings.connection_mode == "plaintext" else "",
                export_bucket=exports.bucket.name if exports else "",
                # Boot once the VM's roles exist; ssl and plaintext modes also need the instance's address (and the
                # DNS record), so they still wait for the database and its user.
                depends_on=[*identity.vm_prerequisites]
                + ([] if settings.connection_mode == "proxy" else [database.database, database.user])
                + ([private_dns.record] if private_dns else []),
            ),
            opts=child(depends_on=apis.services),
        )

        front_door = None
        if domain is not None:
            front_door = FrontDoor(
                "front-door",
                FrontDoorArgs(
                    prefix=prefix,
                    domain=domain,
                    is_prod=settings.is_prod,
                    zone=settings.zone,
                    instance_group=vm.instance_group,
                    depends_on=apis.services,
                ),
                opts=child(),
            )

        if settings.vm.data_disk_snapshots.enabled:
            DataDiskBackups(
                "data-backups",
                DataDiskBackupsArgs(
                    prefix=prefix,
                    region=settings.region,
                    zone=settings.zone,
                    disk_name=vm.data_disk.name,
                    snapshots=settings.vm.data_disk_snapshots,
                    labels=settings.labels,
                ),
                opts=child(depends_on=apis.services),
            )

        monitoring = None
        if settings.monitoring_enabled:
            monitoring = Monitoring(
                "monitoring",
                MonitoringArgs(
                    project=settings.project,
                    prefix=prefix,
                    labels=settings.labels,
                    settings=settings.monitoring,
                    convex_url=vm.convex_url,
                    sql_database_id=database.instance.name.apply(lambda instance: f"{settings.project}:{instance}"),
                    vm_name=vm.name,
                    max_connections=settings.max_connections,
                    url_map_name=front_door.url_map.name if front_door is not None else None,
                    export_age=(exports.metric_type, settings.export_interval_hours * 3600, exports.age_metric) if exports else None,
                ),
                opts=child(depends_on=apis.services),
            )

        # The outputs contract (docs/outputs.md): names are stable; nothing here is a secret value.
        outputs: dict[str, object] = {
            "convex_url": vm.convex_url,
            "convex_site_url": vm.convex_site_url,
        }
        if settings.convex.dashboard:
            outputs["dashboard_url"] = vm.dashboard_url
        outputs.update(
            admin_key_secret=identity.admin_key.id,
            sql_instance_name=database.instance.name,
            sql_connection_name=database.instance.connection_name,
            sql_private_ip=database.instance.private_ip_address,
            database_name=database.database.name,
            database_user=database.user.name,
            vm_name=vm.name,
            vm_zone=vm.zone,
            vm_internal_ip=vm.internal_ip,
            vm_group=vm.group.name,
            vm_service_account=identity.service_account.email,
            network=network.network_name,
            subnetwork=network.subnetwork_name,
            peering_range=network.peering_range.name,
            connection_mode=settings.connection_mode,
        )
        if exports is not None:
            outputs["exports_bucket"] = exports.bucket.name
        if front_door is not None:
            # Point the hosts' A records here when no managed zone holds them (docs/front-door.md).
            outputs["front_door_ip"] = front_door.ip
        if monitoring is not None:
            outputs["monitoring_dashboard_url"] = monitoring.dashboard_url
        self.outputs = outputs
        for key in type(self).__annotations__:
            # Also as properties of the component, for the package's SDKs (unset optional ones stay None).
            setattr(self, key, pulumi.Output.from_input(outputs[key]) if key in outputs else None)
        self.register_outputs(outputs)
