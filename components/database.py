"""Database: the private-IP-only Cloud SQL for PostgreSQL instance, the Convex database and
the database user Convex logs in as (IAM service account or built-in)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pulumi
import pulumi_gcp as gcp
import pulumi_random as random

from convex_gcp import cloudsql
from convex_gcp.adoption import import_ids
from convex_gcp.settings import Settings


def ssl_mode(settings: Settings) -> str:
    """The proxy always presents a client certificate, so proxy mode can demand one."""
    return {"proxy": "TRUSTED_CLIENT_CERTIFICATE_REQUIRED", "ssl": "ENCRYPTED_ONLY"}.get(
        settings.connection_mode, "ALLOW_UNENCRYPTED_AND_ENCRYPTED"
    )


# The shared CA (Certificate Authority Service) issues server certificates whose SAN holds the
# instance's DNS name, which a strict client (Convex's rustls) can verify. Set in every mode so a
# mode switch never asks Cloud SQL to change the CA of an existing instance (docs/connection-modes.md).
SERVER_CA_MODE = "GOOGLE_MANAGED_CAS_CA"
SERVER_CA_MODE_PATH = "settings.ipConfiguration.serverCaMode"


def private_dns_name(dns_names: list | None) -> str:
    """The instance's private-services-access DNS name without the trailing dot ("" if none)."""
    for entry in dns_names or []:
        get = entry.get if isinstance(entry, dict) else lambda key: getattr(entry, key, None)
        kind = get("connection_type") or get("connectionType")
        scope = get("dns_scope") or get("dnsScope")
        if kind == "PRIVATE_SERVICES_ACCESS" and scope == "INSTANCE" and get("name"):
            return str(get("name")).rstrip(".")
    return ""


def connector_enforcement(settings: Settings) -> str:
    required = settings.connection_mode == "proxy" and settings.database.connector_enforcement
    return "REQUIRED" if required else "NOT_REQUIRED"


def instance_settings(
    settings: Settings, private_network: pulumi.Input[str], allocated_ip_range: Optional[pulumi.Input[str]] = None
) -> gcp.sql.DatabaseInstanceSettingsArgs:
    db = settings.database
    backups = db.backups
    pitr = backups.point_in_time_recovery and backups.enabled
    return gcp.sql.DatabaseInstanceSettingsArgs(
        tier=db.tier,
        edition=db.edition,  # PG16+ would default to ENTERPRISE_PLUS, which rejects custom tiers
        availability_type=db.availability,
        disk_type=db.disk_type,
        disk_size=db.disk_size_gb,
        disk_autoresize=True,
        deletion_protection_enabled=settings.sql_deletion_protection,
        retain_backups_on_delete=settings.is_prod,
        location_preference=gcp.sql.DatabaseInstanceSettingsLocationPreferenceArgs(zone=settings.zone),
        ip_configuration=gcp.sql.DatabaseInstanceSettingsIpConfigurationArgs(
            ipv4_enabled=False,
            private_network=private_network,
            # Pinned to our private services access range: another range peered on the same network (a
            # shared VPC often has several) is never picked, and the address is where the firewall expects it.
            allocated_ip_range=allocated_ip_range,
            ssl_mode=ssl_mode(settings),
            server_ca_mode=SERVER_CA_MODE,
        ),
        connector_enforcement=connector_enforcement(settings),
        # iamAuth: the VM grants the Convex role its privileges through the Data API (instances.executeSql,
        # vm/startup.sh ensure_db_grants). Who can use it: holders of cloudsql.instances.executesql on this
        # instance, i.e. the deployer (cloudsql.admin), the VM and grant accounts (cloudsql.instanceUser,
        # conditioned on this instance); each only as its own database user. docs/security.md.
        data_api_access="ALLOW_DATA_API" if settings.iam_auth else None,
        backup_configuration=gcp.sql.DatabaseInstanceSettingsBackupConfigurationArgs(
            enabled=backups.enabled,
            start_time=backups.start_time,
            point_in_time_recovery_enabled=pitr,
            # Only meaningful with PITR; Cloud SQL also wants it below the number of retained backups.
            transaction_log_retention_days=backups.transaction_log_retention_days if pitr else None,
            backup_retention_settings=gcp.sql.DatabaseInstanceSettingsBackupConfigurationBackupRetentionSettingsArgs(
                retained_backups=backups.retained_backups, retention_unit="COUNT"
            ),
        ),
        maintenance_window=gcp.sql.DatabaseInstanceSettingsMaintenanceWindowArgs(
            day=db.maintenance.day, hour=db.maintenance.hour, update_track=db.maintenance.update_track
        ),
        database_flags=[gcp.sql.DatabaseInstanceSettingsDatabaseFlagArgs(name=k, value=v) for k, v in settings.database_flags.items()],
        insights_config=gcp.sql.DatabaseInstanceSettingsInsightsConfigArgs(
            query_insights_enabled=db.query_insights, record_application_tags=False, record_client_address=False
        ),
        user_labels=settings.labels,
    )


@dataclass
class DatabaseArgs:
    settings: Settings
    prefix: str
    private_network: pulumi.Input[str]
    service_networking_connection: pulumi.Resource
    service_account_email: pulumi.Input[str]
    db_password: Optional[pulumi.Input[str]] = None
    # iamAuth: the account the VM acts as to grant the Convex role its privileges (Data API).
    grant_account_email: Optional[pulumi.Input[str]] = None
    # The private services access range's name (settings.ipConfiguration.allocatedIpRange).
    allocated_ip_range: Optional[pulumi.Input[str]] = None
    depends_on: list[pulumi.Resource] = field(default_factory=list)


def suffix_keepers(settings: Settings) -> dict[str, str]:
    """Every input that forces a new instance (terraform-provider-google resource_sql_database_instance.go,
    v7.44+ as in pulumi-gcp 10.2.0: `region` and `project` are ForceNew; `disk_type` stopped being ForceNew
    in #28616, `database_version` upgrades in place). A change to any of them draws a new suffix, so the new
    instance never asks for the name Cloud SQL keeps reserved for a week after the old one is deleted."""
    return {"project": settings.project, "region": settings.region}


def connection_name(project: str, region: str, instance: str) -> str:
    """Cloud SQL's connection name, `project:region:instance`, known before the instance exists."""
    return f"{project}:{region}:{instance}"


BUILT_IN_USER = "convex"


class Database(pulumi.ComponentResource):
    """Owns the Cloud SQL instance, the Convex database and its user."""

    def __init__(self, name: str, args: DatabaseArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("convex-gcp:index:Database", name, None, opts)
        s = args.settings
        adopted = import_ids(s)
        # Protected in every stack, dev too: the engine refuses to delete or replace a resource protected
        # in state and program (pulumi pkg/resource/deploy/step_generator.go), so no update or destroy wipes
        # the data by accident. Lifting it on purpose is `convex-gcp:unprotect` (docs/runbooks.md).
        protect = s.protects("sqlInstance")
        protect_database = s.protects("database")

        if s.adopt.sql_instance or s.database.instance_name:
            instance_name: pulumi.Input[str] = s.adopt.sql_instance or s.database.instance_name
        else:
            # Deleted instance names stay reserved for about a week; a suffix lets a stack be recreated.
            # keepers: a ForceNew change replaces the suffix first, so the instance is replaced under a new
            # name; both are protected, so such a change stops at the preview instead (the engine refuses to
            # replace a resource protected in both state and program, step_generator.go).
            suffix = random.RandomId(
                f"{name}-suffix", byte_length=2, keepers=suffix_keepers(s), opts=pulumi.ResourceOptions(parent=self, protect=protect)
            )
            instance_name = suffix.hex.apply(lambda h: f"{args.prefix}-pg-{h}")
        # Known before the instance exists: IAM conditions name it (components/identity.py bind_sql_instance).
        self.instance_name = pulumi.Output.from_input(instance_name)
        # What the VM needs, computed from inputs so it does not wait for the instance (proxy mode).
        self.connection_name = pulumi.Output.from_input(instance_name).apply(lambda n: connection_name(s.project, s.region, n))

        self.instance = gcp.sql.DatabaseInstance(
            f"{name}-instance",
            name=instance_name,
            region=s.region,
            database_version=s.database.version,
            settings=instance_settings(s, args.private_network, args.allocated_ip_range),
            deletion_protection=s.sql_deletion_protection,
            opts=pulumi.ResourceOptions(
                parent=self,
                protect=protect,
                # No implicit dependency exists on the peering; creation fails without it.
                depends_on=[args.service_networking_connection, *args.depends_on],
                # disk_autoresize grows the disk; do not shrink it back to the configured size.
                # An instance created before the CA choice (or adopted) keeps its CA unless ssl mode
                # needs the shared CA: Cloud SQL may refuse to change the CA of an existing instance.
                ignore_changes=["settings.diskSize"] + ([] if s.connection_mode == "ssl" else [SERVER_CA_MODE_PATH]),
                import_=adopted["sql_instance"],
            ),
        )
        self.database = gcp.sql.Database(
            f"{name}-convex-db",
            name=s.database_name,
            instance=self.instance.name,
            # Dropping a database that holds Convex data should never be a side effect: only a deliberate
            # `unprotect` of a database this stack created lets a delete drop it.
            deletion_policy="DELETE" if not protect_database and adopted["sql_database"] is None else "ABANDON",
            opts=pulumi.ResourceOptions(parent=self, protect=protect_database, import_=adopted["sql_database"]),
        )
        user_name: pulumi.Input[str] = BUILT_IN_USER
        if s.iam_auth:
            user_name = pulumi.Output.from_input(args.service_account_email).apply(cloudsql.iam_user_name)
            self.user = gcp.sql.User(
                f"{name}-iam-user",
                name=user_name,
                instance=self.instance.name,
                type="CLOUD_IAM_SERVICE_ACCOUNT",
                # IAM users start with no privileges, and the Convex role keeps it that way: no role at all
                # (earlier versions asked for cloudsqlsuperuser; an empty list takes it away). Its grants, exactly
                # what Convex needs (convex_gcp/db_grants.py), come from the VM at every boot.
                database_roles=[],
                deletion_policy="ABANDON",
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.database]),
            )
            if args.grant_account_email is None:
                raise ValueError("iamAuth needs the grant account")
            # The grant account: a member of cloudsqlsuperuser (the database's owner), so it may GRANT on the
            # database and schema public. It logs in only through the Data API.
            self.grant_user = gcp.sql.User(
                f"{name}-sqlgrant-user",
                name=pulumi.Output.from_input(args.grant_account_email).apply(cloudsql.iam_user_name),
                instance=self.instance.name,
                type="CLOUD_IAM_SERVICE_ACCOUNT",
                database_roles=["cloudsqlsuperuser"],
                deletion_policy="ABANDON",
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.database]),
            )
        else:
            if args.db_password is None:
                raise ValueError("a built-in database user needs a password")
            self.user = gcp.sql.User(
                f"{name}-user",
                name=BUILT_IN_USER,
                instance=self.instance.name,
                type="BUILT_IN",
                password=args.db_password,
                deletion_policy="ABANDON",
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.database]),
            )

        self.user_name = pulumi.Output.from_input(user_name)
        # What Convex connects to in ssl mode: the name in the server certificate's SAN.
        self.private_dns_name = self.instance.dns_names.apply(private_dns_name)

        self.register_outputs(
            {
                "instance_name": self.instance.name,
                "connection_name": self.instance.connection_name,
                "private_ip": self.instance.private_ip_address,
                "database_name": self.database.name,
                "user": self.user.name,
            }
        )
