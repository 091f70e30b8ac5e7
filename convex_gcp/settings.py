"""The stack's settings: one pydantic model tree read from Pulumi config, checked before
any resource is declared. Every problem names its key path, what is wrong, what is
allowed and the `pulumi config set` line that fixes it.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from . import cloudsql, convex_env, gce_catalog, suggest
from .errors import ConfigError, Problem, problem_from_pydantic, rm_line, segment, set_line
from .flags import FLAGS, FlagError, FlagValue, convert_flag, flag_bytes
from .placement import Lookup

__all__ = ["ConfigError", "Problem", "Settings", "load_settings", "set_line"]

PROJECT = "convex-gcp"

# Pinned images, verified upstream (convex_gcp/images.py); bump deliberately (docs/runbooks.md).
from .images import COS_IMAGE, COS_PROJECT, CONVEX_VERSION, PROXY_VERSION  # noqa: E402

IAP_RANGE = "35.235.240.0/20"

# What `convex-gcp:unprotect` may name: the resources that hold data (or the key to it).
PROTECTED_RESOURCES = ("sqlInstance", "database", "instanceSecret", "dataDisk")


def _custom(reason: str, allowed: str, example: str, candidates: Optional[list[str]] = None) -> PydanticCustomError:
    """A validation error carrying its fix: `candidates` are the values most likely meant
    (several: ambiguous, each gets a fix line); without them `example` is the fix."""
    ctx: dict[str, Any] = {"reason": reason, "allowed": allowed, "example": example}
    if candidates is not None:
        ctx["candidates"] = candidates
    return PydanticCustomError("convex_gcp", "{reason}", ctx)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


class _ConvexDerived:
    """What both targets derive from `convex` and their `max_connections` property."""

    @property
    def pool_size(self) -> int:
        return self.convex.pool_size or cloudsql.derived_pool(self.max_connections)

    @property
    def database_name(self) -> str:
        return cloudsql.database_name(self.convex.instance_name)


class NetworkSettings(_Model):
    """`convex-gcp:network`"""

    existing_network: Optional[str] = None
    existing_subnetwork: Optional[str] = None
    subnet_cidr: str = "10.20.0.0/24"
    private_services_prefix_length: int = Field(16, ge=8, le=24)
    api_source_ranges: list[str] = []
    dashboard_source_ranges: list[str] = []
    ssh_source_ranges: list[str] = [IAP_RANGE]
    # Without a domain, public apiSourceRanges/dashboardSourceRanges send the admin key over plain HTTP:
    # refused unless this says so (dev only; the default is the IAP tunnel, docs/delivery.md).
    public_http_without_tls: bool = False

    @field_validator("subnet_cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        _check_cidr(value)
        return value

    @field_validator("api_source_ranges", "dashboard_source_ranges", "ssh_source_ranges")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        return _check_cidrs(values)

    @field_validator("existing_network", "existing_subnetwork")
    @classmethod
    def _resource_name(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", value):
            raise _custom(f"{value!r} is not a network name", "a lowercase name such as default", "default")
        return value


def _check_cidrs(values: list[str]) -> list[str]:
    for value in values:
        _check_cidr(value)
    return values


def _check_whole_hour(value: str, example: str) -> str:
    if not re.fullmatch(r"([01]\d|2[0-3]):00", value):
        raise _custom(f"{value!r} is not a whole hour HH:00 (UTC)", "HH:00 in UTC", example)
    return value


def _check_cidr(value: str) -> None:
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise _custom(f"{value!r} is not a CIDR range", "an IPv4 range such as 203.0.113.0/24", "203.0.113.0/24") from None


class BackupSettings(_Model):
    enabled: bool = True
    start_time: str = "18:00"
    point_in_time_recovery: bool = True
    transaction_log_retention_days: int = Field(7, ge=1, le=7)
    retained_backups: int = Field(7, ge=1, le=365)

    @field_validator("start_time")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        return _check_whole_hour(value, "18:00")


class MaintenanceSettings(_Model):
    day: int = Field(7, ge=1, le=7)
    hour: int = Field(18, ge=0, le=23)
    update_track: Literal["canary", "stable", "week5"] = "stable"


class DatabaseSettings(_Model):
    """`convex-gcp:database`"""

    tier: str = "db-g1-small"
    edition: Literal["ENTERPRISE", "ENTERPRISE_PLUS"] = "ENTERPRISE"
    version: Literal["POSTGRES_15", "POSTGRES_16", "POSTGRES_17", "POSTGRES_18"] = "POSTGRES_17"
    availability: Literal["ZONAL", "REGIONAL"] = "ZONAL"
    flags: dict[str, FlagValue] = {}
    disk_size_gb: int = Field(10, ge=10, le=65536)
    disk_type: Literal["PD_SSD", "PD_HDD"] = "PD_SSD"
    backups: BackupSettings = BackupSettings()
    maintenance: MaintenanceSettings = MaintenanceSettings()
    deletion_protection: Optional[bool] = None
    connector_enforcement: bool = True
    query_insights: bool = True
    # Adopt an instance by name instead of a generated one (names stay taken a week after deletion).
    instance_name: Optional[str] = None

    @field_validator("tier")
    @classmethod
    def _tier(cls, value: str) -> str:
        try:
            cloudsql.parse_tier(value)
        except cloudsql.TierError as error:
            raise _custom(
                str(error),
                "db-f1-micro, db-g1-small, db-custom-<vCPUs>-<MB> (ENTERPRISE), db-perf-optimized-N-<vCPUs> (ENTERPRISE_PLUS)",
                "db-custom-2-7680",
                cloudsql.tiers_meant(value),
            ) from None
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            return f"POSTGRES_{value}"
        return value


class SnapshotSettings(_Model):
    """`convex-gcp:vm.dataDiskSnapshots`: daily snapshots of the Convex data disk."""

    enabled: bool = True
    start_time: str = "19:00"
    retention_days: int = Field(14, ge=1, le=3650)
    # Keep the last snapshots when the disk itself is deleted: they are its only copy then.
    keep_on_disk_delete: bool = True

    @field_validator("start_time")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        return _check_whole_hour(value, "19:00")


class VmSettings(_Model):
    """`convex-gcp:vm`"""

    machine_type: str = "e2-medium"
    zone: Optional[str] = None
    image: str = f"{COS_PROJECT}/{COS_IMAGE}"
    # The internal IP the VM keeps (reserved); unset: one the subnet assigns. Set it to a bare VM's current
    # address when moving an existing stack to the group (docs/updates.md).
    internal_ip: Optional[str] = None
    boot_disk_size_gb: int = Field(20, ge=10, le=2048)
    data_disk_size_gb: int = Field(20, ge=10, le=65536)
    data_disk_type: Literal["pd-balanced", "pd-ssd", "pd-standard"] = "pd-balanced"
    data_disk_snapshots: SnapshotSettings = SnapshotSettings()
    deletion_protection: Optional[bool] = None

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        # An exact build: a family (cos-stable, cos-125-lts) would be looked up at every preview and move the VM
        # to whatever Google published last.
        project, _, name = value.rpartition("/")
        if not re.fullmatch(r"[a-z][-a-z0-9]{4,28}[a-z0-9]", project or "") or not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", name):
            raise _custom(f"{value!r} is not <project>/<image>", "an exact image such as " + f"{COS_PROJECT}/{COS_IMAGE}", f"{COS_PROJECT}/{COS_IMAGE}")
        if re.fullmatch(r"cos-(arm64-)?(stable|beta|dev|\d+-lts)", name):
            raise _custom(f"{value!r} is an image family, which moves with every COS release",
                          f"an exact build, e.g. {COS_PROJECT}/{COS_IMAGE} (the bump workflow proposes new ones)", f"{COS_PROJECT}/{COS_IMAGE}")
        return value

    @field_validator("internal_ip")
    @classmethod
    def _internal_ip(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            try:
                ip = ipaddress.IPv4Address(value)
            except ValueError:
                ip = None
            if ip is None or not ip.is_private:
                raise _custom(f"{value!r} is not a private IPv4 address", "an address inside the subnet", "10.20.0.2")
        return value

    @field_validator("deletion_protection")
    @classmethod
    def _deletion_protection(cls, value: Optional[bool]) -> Optional[bool]:
        # Compute Engine refuses deletion protection on a VM of a managed instance group.
        if value:
            raise _custom("Compute Engine deletion protection is not available for a VM in a managed instance group",
                          "false or unset: the data disk is protected instead (protect in every stack)", "false")
        return value

    @property
    def image_link(self) -> str:
        project, _, name = self.image.rpartition("/")
        return f"projects/{project}/global/images/{name}"

    @field_validator("machine_type")
    @classmethod
    def _machine_type(cls, value: str) -> str:
        # Whether the type exists (and in the zone) is checked with the region: _check_placement.
        if not re.fullmatch(r"[a-z][a-z0-9]*-[a-z0-9-]+", value):
            meant = suggest.closest(value, gce_catalog.predefined())
            raise _custom(f"{value!r} is not a machine type", "a Compute Engine machine type such as e2-medium", "e2-medium", meant)
        return value


class ConvexSettings(_Model):
    """`convex-gcp:convex`"""

    instance_name: str = "convex-self-hosted"
    pool_size: Optional[int] = Field(None, ge=1)
    version: str = CONVEX_VERSION
    proxy_version: str = PROXY_VERSION
    dashboard: bool = True
    log_level: str = "info"
    disable_beacon: bool = False
    redact_logs_to_client: bool = False
    # Convex's own settings (convex_gcp/convex_env.py; reasons and defaults in docs/configuration.md).
    document_retention_delay_seconds: int = Field(convex_env.DEFAULT_DOCUMENT_RETENTION_SECONDS, ge=60, le=366 * 24 * 3600)
    max_concurrent_queries: Optional[int] = Field(None, ge=1, le=1024)
    max_concurrent_mutations: Optional[int] = Field(None, ge=1, le=1024)
    max_concurrent_v8_actions: Optional[int] = Field(None, ge=1, le=1024)
    max_concurrent_node_actions: Optional[int] = Field(None, ge=1, le=1024)
    v8_action_timeout_seconds: Optional[int] = Field(None, ge=1, le=24 * 3600)
    node_action_timeout_seconds: Optional[int] = Field(None, ge=1, le=24 * 3600)
    env: dict[str, str] = {}

    @field_validator("env", mode="before")
    @classmethod
    def _env_values(cls, value: Any) -> Any:
        # `pulumi config set --path 'convex-gcp:convex.env.X' 5` stores 5 (digits become integers): Convex reads text.
        if isinstance(value, dict):
            return {k: (json.dumps(v) if isinstance(v, bool) else str(v)) if isinstance(v, (int, float, bool)) else v for k, v in value.items()}
        return value

    @field_validator("instance_name")
    @classmethod
    def _instance_name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9-]{1,60}[a-z0-9]", value):
            raise _custom(f"{value!r} is not a Convex instance name", "lowercase letters, digits and '-', 3 to 62 characters", "convex-self-hosted")
        return value

    @field_validator("version")
    @classmethod
    def _commit(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{40}", value):
            raise _custom(f"{value!r} is not a commit tag", "a full 40-hex commit SHA of a Convex release ('latest' moves)", CONVEX_VERSION)
        return value

    @field_validator("proxy_version")
    @classmethod
    def _proxy(cls, value: str) -> str:
        match = re.fullmatch(r"2\.(\d+)\.(\d+)(-alpine)?", value)
        if not match or int(match.group(1)) < 18:
            raise _custom(f"{value!r} is not a pinned Cloud SQL Auth Proxy 2.x release newer than 2.17", "2.18.0 or newer, e.g. " + PROXY_VERSION, PROXY_VERSION)
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if "\n" in value or " " in value:
            raise _custom("RUST_LOG must be one line without spaces", "a RUST_LOG filter such as info", "info")
        return value


# Google's front ends (load balancer proxies and health checks) connect to backends from these.
GOOGLE_LB_RANGES = ("130.211.0.0/22", "35.191.0.0/16")
_HOST = re.compile(r"(?=.{4,63}$)([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
# IAM rejects a malformed principal only at apply time, after other resources changed: check the
# shapes here (an email for user/group/serviceAccount, a domain name, or a principal:// URI).
_MEMBER = re.compile(
    r"(user|group|serviceAccount):[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
    r"|domain:[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z]{2,}|principal(Set)?://iam\.googleapis\.com/\S+"
)


# Cloud Armor priorities: the user's rules first (1-899), then the program's (900 and up, front_door.py).
ARMOR_USER_PRIORITY_MAX = 899


def _check_host(value: Optional[str]) -> Optional[str]:
    if value is not None and not _HOST.fullmatch(value):
        raise _custom(
            f"{value!r} is not a host name a Google-managed certificate can cover",
            "a lowercase fully qualified name of at most 63 characters, no wildcard, no trailing dot",
            "api.convex.example.com",
        )
    return value


class RateLimitSettings(_Model):
    """`convex-gcp:domain.armor.rateLimit`: per client IP; throttles, or bans when banDurationSec is set."""

    count: int = Field(ge=1, le=1_000_000)
    interval_sec: Literal[10, 30, 60, 120, 180, 240, 300, 600, 900, 1200, 1800, 2700, 3600] = 60
    ban_duration_sec: Optional[int] = Field(None, ge=60, le=86400)


class ArmorRuleSettings(_Model):
    """`convex-gcp:domain.armor.rules[i]`: a rule of your own, evaluated before the program's (priority 1-899)."""

    priority: int = Field(ge=1, le=ARMOR_USER_PRIORITY_MAX)
    action: Literal["allow", "deny(403)", "deny(404)", "deny(429)", "deny(502)"]
    # Exactly one: an advanced match (Cloud Armor custom rules language, at most five subexpressions, e.g.
    # "evaluatePreconfiguredWaf('sqli-v33-stable')") or source ranges (a basic match, at most 10).
    expression: Optional[str] = Field(None, min_length=1, max_length=2048)
    src_ip_ranges: list[str] = Field([], max_length=10)
    description: str = ""
    # Log what the rule would do without doing it (Cloud Armor preview mode).
    preview: bool = False

    @field_validator("src_ip_ranges")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        return _check_cidrs(values)


class ArmorSettings(_Model):
    """`convex-gcp:domain.armor`: Cloud Armor on the front door's backends. On by default in prod, where it
    also always has a per-client throttle (DEFAULT_RATE_LIMIT unless rateLimit says otherwise)."""

    enabled: bool = True
    # One basic-match rule takes at most 10 ranges.
    allow_ranges: list[str] = Field([], max_length=10)
    rate_limit: Optional[RateLimitSettings] = None
    # When set, the API host's admin routes (every /api/ path but the client ones, front_door.py) answer only
    # these sources; the CLI (`npx convex deploy`) and the dashboard's browser must come from them.
    admin_ranges: list[str] = Field([], max_length=9)
    rules: list[ArmorRuleSettings] = Field([], max_length=50)

    @field_validator("allow_ranges", "admin_ranges")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        return _check_cidrs(values)


# Prod's per-client throttle when domain.armor.rateLimit is unset: 20 requests a second per IP on average.
# A Convex client holds one websocket for its queries and mutations, so this bounds HTTP API calls, HTTP
# actions and reconnect storms; raise it for many users behind one NAT (docs/front-door.md).
DEFAULT_RATE_LIMIT = RateLimitSettings(count=1200, interval_sec=60)


class DomainSettings(_Model):
    """`convex-gcp:domain`: the HTTPS front door (global external Application Load Balancer)."""

    api_host: str
    site_host: str
    dashboard_host: Optional[str] = None
    # A Cloud DNS managed zone (name) in this project to hold the A records; unset: create them yourself.
    managed_zone: Optional[str] = None
    # The API backend's timeout is the longest a Convex sync websocket may stay open (docs/front-door.md).
    websocket_timeout_sec: int = Field(86400, ge=600, le=86400)
    # Granted roles/iap.httpsResourceAccessor on the dashboard's backend (IAP).
    dashboard_members: list[str] = []
    armor: Optional[ArmorSettings] = None
    # Hosts served besides the main ones, each with its own certificate, routed like their role's host: the
    # old name while clients move off it, or a new one whose certificate must be ACTIVE before it becomes the
    # main host (docs/front-door.md, "Changing a host without a TLS outage").
    additional_hosts: dict[Literal["api", "site", "dashboard"], list[str]] = {}

    @field_validator("additional_hosts")
    @classmethod
    def _more_hosts(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for hosts in value.values():
            for host in hosts:
                _check_host(host)
        return value

    @field_validator("api_host", "site_host", "dashboard_host")
    @classmethod
    def _host(cls, value: Optional[str]) -> Optional[str]:
        return _check_host(value)

    @field_validator("managed_zone")
    @classmethod
    def _zone(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", value):
            raise _custom(f"{value!r} is not a Cloud DNS zone name", "the zone's name (not its DNS name)", "convex-example-com")
        return value

    @field_validator("dashboard_members")
    @classmethod
    def _members(cls, values: list[str]) -> list[str]:
        for value in values:
            if not _MEMBER.fullmatch(value):
                raise _custom(f"{value!r} is not an IAM member", "user:, group:, domain: or serviceAccount: followed by an id", "group:convex-admins@example.com")
        return values

    def armor_policy(self, is_prod: bool) -> Optional[ArmorSettings]:
        """The Cloud Armor settings in force: prod always has a policy with a per-client throttle."""
        armor = self.armor if self.armor is not None else (ArmorSettings() if is_prod else None)
        if armor is None or not armor.enabled:
            return None
        if is_prod and armor.rate_limit is None:
            armor = armor.model_copy(update={"rate_limit": DEFAULT_RATE_LIMIT})
        return armor

    @property
    def hosts(self) -> dict[str, str]:
        """Role → host name, for the roles that have one."""
        roles = {"api": self.api_host, "site": self.site_host, "dashboard": self.dashboard_host}
        return {role: host for role, host in roles.items() if host}

    @property
    def served_hosts(self) -> dict[str, list[str]]:
        """Role → every host the front door serves for it: the main one first, then additionalHosts."""
        return {role: [host, *self.additional_hosts.get(role, [])] for role, host in self.hosts.items()}


class MonitoringSettings(_Model):
    """`convex-gcp:monitoring`: uptime check, alert policies and where alerts go."""

    enabled: Optional[bool] = None  # unset: on in prod, off in dev
    notification_emails: list[str] = []
    uptime_period_seconds: Literal[60, 300, 600, 900] = 60
    sql_cpu_utilization: float = Field(0.8, gt=0, le=1)
    sql_memory_utilization: float = Field(0.9, gt=0, le=1)
    sql_disk_utilization: float = Field(0.85, gt=0, le=1)
    # Alert when server connections pass this share of max_connections.
    sql_connections_ratio: float = Field(0.8, gt=0, le=1)
    # More container starts than this within 10 minutes means a crash loop.
    restarts_per_10_minutes: int = Field(2, ge=1, le=100)
    alert_after_seconds: int = Field(300, ge=0, le=86400)
    # The VM (COS node-problem-detector's guest metrics): memory in use, and each disk's share used.
    vm_memory_utilization: float = Field(0.9, gt=0, le=1)
    vm_disk_utilization: float = Field(0.85, gt=0, le=1)
    # Convex's own metrics (the collector on the VM): share of HTTP requests answered 5xx.
    convex_error_ratio: float = Field(0.05, gt=0, le=1)

    @field_validator("notification_emails")
    @classmethod
    def _emails(cls, values: list[str]) -> list[str]:
        for value in values:
            if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
                raise _custom(f"{value!r} is not an email address", "addresses such as oncall@example.com", '["oncall@example.com"]')
        return values


class ExportSettings(_Model):
    """`convex-gcp:exports`: scheduled Convex snapshot exports (tables and file storage) to a Cloud
    Storage bucket the stack creates (components/exports.py, vm/convex-export.sh)."""

    enabled: bool = True
    interval_hours: Optional[int] = Field(None, ge=1, le=168)  # unset: 24 in dev, 6 in prod
    retention_days: Optional[int] = Field(None, ge=1, le=3650)  # unset: 7 in dev, 30 in prod
    # Bucket Lock: the retention policy can then never be shortened or removed. Unset: locked in prod.
    locked: Optional[bool] = None
    include_storage: bool = True


class AdoptSettings(_Model):
    """`convex-gcp:adopt`: existing resources (for example the seed guide's) that the stack
    imports instead of creating. Declared inputs must match them: see docs/adoption.md."""

    sql_instance: Optional[str] = None
    # The Convex database already exists in the adopted instance.
    database: bool = True
    peering_range: Optional[str] = None
    vm: Optional[str] = None

    @field_validator("sql_instance", "peering_range", "vm")
    @classmethod
    def _name(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", value):
            raise _custom(f"{value!r} is not a resource name", "a lowercase Google Cloud resource name", "convex-postgres")
        return value


class Settings(_ConvexDerived, _Model):
    """The whole stack configuration."""

    project: str
    region: str
    stack: str
    environment: Literal["dev", "prod"]
    connection_mode: Literal["proxy", "ssl", "plaintext"] = "proxy"
    iam_auth: bool = False
    network: NetworkSettings = NetworkSettings()
    database: DatabaseSettings = DatabaseSettings()
    vm: VmSettings = VmSettings()
    convex: ConvexSettings = ConvexSettings()
    domain: Optional[DomainSettings] = None
    monitoring: MonitoringSettings = MonitoringSettings()
    exports: ExportSettings = ExportSettings()
    adopt: AdoptSettings = AdoptSettings()
    # Data resources whose Pulumi `protect` is lifted for a deliberate replacement or teardown
    # (docs/runbooks.md, "Replacing a protected resource on purpose"); empty: all protected, every stack.
    unprotect: list[Literal["sqlInstance", "database", "instanceSecret", "dataDisk"]] = []

    def protects(self, resource: str) -> bool:
        """Whether `resource` (a value of `unprotect`) carries Pulumi's `protect`: in every stack,
        unless listed in `unprotect`. The engine then refuses to delete or replace it."""
        assert resource in PROTECTED_RESOURCES, resource
        return resource not in self.unprotect

    @property
    def export_interval_hours(self) -> int:
        return self.exports.interval_hours or (6 if self.is_prod else 24)

    @property
    def export_retention_days(self) -> int:
        return self.exports.retention_days or (30 if self.is_prod else 7)

    @property
    def export_locked(self) -> bool:
        return self.exports.locked if self.exports.locked is not None else self.is_prod

    @property
    def monitoring_enabled(self) -> bool:
        return self.monitoring.enabled if self.monitoring.enabled is not None else self.is_prod

    @property
    def is_prod(self) -> bool:
        return self.environment == "prod"

    @property
    def labels(self) -> dict[str, str]:
        """Labels on every labelled resource, for billing and inventory."""
        return {"app": "convex", "environment": self.environment, "stack": self.stack}

    @property
    def zone(self) -> str:
        # Unset: the region's first zone (not always -a: us-east1 starts at -b).
        return self.vm.zone or (gce_catalog.zones_of(self.region) or [f"{self.region}-a"])[0]

    @property
    def tier(self) -> cloudsql.Tier:
        return cloudsql.parse_tier(self.database.tier)

    @property
    def database_flags(self) -> dict[str, str]:
        """Flags as Cloud SQL receives them; IAM login needs its flag on."""
        flags = {name: convert_flag(name, value) for name, value in sorted(self.database.flags.items())}
        if self.iam_auth:
            flags["cloudsql.iam_authentication"] = "on"
        return flags

    @property
    def max_connections(self) -> int:
        configured = self.database_flags.get("max_connections")
        return int(configured) if configured else cloudsql.default_max_connections(self.tier)


    @property
    def sql_deletion_protection(self) -> bool:
        return self.database.deletion_protection if self.database.deletion_protection is not None else self.is_prod

    @property
    def vm_deletion_protection(self) -> bool:
        # Off by default, prod included: the VM holds no data (the data disk is separate and protected)
        # and is replaced to patch its OS, which Compute Engine deletion protection would block.
        return bool(self.vm.deletion_protection)


# --------------------------------------------------------------------------- errors

_TOP_LEVEL = {
    "environment": "environment",
    "connectionMode": "connection_mode",
    "iamAuth": "iam_auth",
    "network": "network",
    "database": "database",
    "vm": "vm",
    "convex": "convex",
    "domain": "domain",
    "monitoring": "monitoring",
    "exports": "exports",
    "adopt": "adopt",
    "unprotect": "unprotect",
}


def _problem_from_pydantic(error: dict[str, Any]) -> Problem:
    return problem_from_pydantic(error, Settings)


def _parse_value(value: Any) -> Any:
    """Config values arrive as strings; objects and booleans as JSON text."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def load_settings(config: dict[str, Any], stack: str, lookup: Optional[Lookup] = None) -> Settings:
    """Build Settings from a flat Pulumi config map (`ns:key` → value); raise ConfigError.
    `lookup` asks the project for its zones and machine types (convex_gcp/placement.py);
    without it, or when it cannot answer, the table in gce_catalog is the reference."""
    problems: list[Problem] = check_target(config)
    raw: dict[str, Any] = {"stack": stack}
    for field in ("project", "region"):
        value = config.get(f"gcp:{field}")
        if value:
            raw[field] = value
    for key, value in config.items():
        namespace, _, name = key.partition(":")
        if namespace != PROJECT or name in ("target", *_LOCAL_ONLY):
            continue
        if name not in _TOP_LEVEL:
            problems.append(_unknown_top_level(name, value))
            continue
        parsed = _parse_value(value)
        if name in ("environment", "connectionMode") and not isinstance(parsed, str):
            parsed = value
        raw[_TOP_LEVEL[name]] = parsed
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as error:
        problems += [_problem_from_pydantic(e) for e in error.errors(include_url=False)]
        raise ConfigError(problems, stack) from None
    problems += check_rules(settings)
    problems += convex_env.problems(settings.convex.env)
    problems += _check_placement(settings, lookup)
    if problems:
        raise ConfigError(problems, stack)
    return settings


def _unknown_top_level(name: str, value: Any) -> Problem:
    path = f"{PROJECT}:{name}"
    head = re.split(r"[.\[]", name, maxsplit=1)[0]
    if head in _TOP_LEVEL and head != name:
        # `pulumi config set convex-gcp:database.tier x` (no --path) stores one flat key named
        # "database.tier"; Pulumi nests it only with --path.
        shown = value if isinstance(value, str) else json.dumps(value)
        return Problem(
            path,
            f"a flat key named {name!r}: without --path, Pulumi does not nest it under {head!r}",
            f"the same key set with --path (pulumi config set --path '{path}' ...)",
            f"pulumi config rm '{path}' && {set_line(path, shown)}",
        )
    close = suggest.closest(name, list(_TOP_LEVEL), limit=1)
    return Problem(path, f"unknown key{suggest.did_you_mean(close)}", "keys: " + ", ".join(_TOP_LEVEL), f"pulumi config rm '{path}'")


# --------------------------------------------------------------------------- rules


def check_rules(settings: Settings) -> list[Problem]:
    """Rules across fields. Each returns problems instead of raising, so all are reported."""
    problems: list[Problem] = []
    problems += _check_region(settings)
    problems += _check_mode(settings)
    problems += _check_edition(settings)
    problems += _check_availability(settings)
    flag_problems = _check_flags(settings)
    problems += flag_problems
    if not flag_problems:
        problems += _check_pool(settings)
    prod = _check_prod(settings)
    # A key the prod rules already name (dashboardSourceRanges 0.0.0.0/0) is reported once.
    problems += [p for p in _check_domain(settings) if p.path not in {q.path for q in prod}]
    problems += prod
    problems += _check_monitoring(settings)
    problems += _check_exports(settings)
    problems += _check_adopt(settings)
    problems += _check_public_http(settings)
    problems += check_placeholders(settings)
    return problems


def _public_http_ranges(s: Settings) -> dict[str, tuple[list[str], list[str]]]:
    """Without a domain: key -> (its ranges, the public ones), where public ranges would reach Convex over plain HTTP."""
    if s.domain is None:
        keyed = {"apiSourceRanges": s.network.api_source_ranges, "dashboardSourceRanges": s.network.dashboard_source_ranges}
        found = {key: (ranges, [r for r in ranges if not ipaddress.ip_network(r).is_private]) for key, ranges in keyed.items()}
        return {key: value for key, value in found.items() if value[1]}
    return {}


def _check_public_http(s: Settings) -> list[Problem]:
    if s.network.public_http_without_tls or s.is_prod:  # prod requires the domain (_check_prod)
        return []
    return [
        Problem(
            f"{PROJECT}:network.{key}",
            f"{', '.join(public)} would reach Convex over plain HTTP: the admin key (npx convex deploy, the dashboard) "
            "would cross the internet unencrypted",
            "private ranges; reach Convex through the IAP tunnel (docs/delivery.md), or set domain for HTTPS, "
            "or accept plaintext in dev with network.publicHttpWithoutTls true",
            set_line(f"{PROJECT}:network.{key}", [r for r in ranges if r not in public]),
        )
        for key, (ranges, public) in _public_http_ranges(s).items()
    ]


def _check_monitoring(s: Settings) -> list[Problem]:
    if not (s.is_prod and s.monitoring_enabled and not s.monitoring.notification_emails):
        return []
    path = f"{PROJECT}:monitoring.notificationEmails"
    return [Problem(path, "prod alerts would reach nobody: no notification channel", "one or more email addresses", set_line(path + "[0]", "oncall@example.com"))]


def _check_exports(s: Settings) -> list[Problem]:
    """The lifecycle deletes an export once retention has passed: it must outlive the next two, or a
    failed export could leave no copy at all."""
    if not s.exports.enabled or s.export_retention_days * 24 >= 2 * s.export_interval_hours:
        return []
    path = f"{PROJECT}:exports.retentionDays"
    days = -(-2 * s.export_interval_hours // 24)
    return [Problem(path, f"{s.export_retention_days} day(s) keep fewer than two exports {s.export_interval_hours} hours apart",
                    f"at least {days} day(s) (two intervals)", set_line(path, days))]


def _check_adopt(s: Settings) -> list[Problem]:
    """Adopted names must agree with the rest of the config; see docs/adoption.md."""
    a = s.adopt
    problems = []
    if a.peering_range and not s.network.existing_network:
        path = f"{PROJECT}:network.existingNetwork"
        problems.append(Problem(path, f"adopting peering range {a.peering_range!r} needs the network it belongs to", "the existing network's name (the seed used default)", set_line(path, "default")))
    if a.sql_instance and s.database.instance_name and s.database.instance_name != a.sql_instance:
        path = f"{PROJECT}:database.instanceName"
        problems.append(Problem(path, f"{s.database.instance_name!r} differs from adopt.sqlInstance {a.sql_instance!r}", "unset, or the adopted instance's name", f"pulumi config rm --path '{path}'"))
    if a.sql_instance and a.peering_range is None and s.network.existing_network:
        path = f"{PROJECT}:adopt.peeringRange"
        problems.append(Problem(path, "the adopted instance is peered through an existing range; a second range would be allocated", "the range's name (the seed used google-managed-services-default)", set_line(path, "google-managed-services-default")))
    return problems


_PROJECT_ID = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")


def _check_region(s: Settings) -> list[Problem]:
    """The stack name and project id (region and zone: _check_placement)."""
    problems = []
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,14}[a-z0-9]|[a-z]", s.stack):
        problems.append(
            Problem("(stack name)", f"{s.stack!r} cannot prefix resource names", "1-16 lowercase letters, digits and '-'", f"pulumi stack rename {re.sub('[^a-z0-9-]', '-', s.stack.lower())[:16]}")
        )
    if not _PROJECT_ID.fullmatch(s.project):
        respelled = re.sub(r"[\s_.]+", "-", s.project.strip().lower())
        fix = set_line("gcp:project", respelled) if _PROJECT_ID.fullmatch(respelled) else 'pulumi config set gcp:project "$(gcloud config get-value project)"'
        problems.append(Problem("gcp:project", f"{s.project!r} is not a project id", "6-30 lowercase letters, digits and '-'", fix))
    return problems


def _check_placement(s: Settings, lookup: Optional[Lookup]) -> list[Problem]:
    """Region, zone and machine type: the project's answer when it gives one, else the table.
    Both paths give the same problems; the reason names which one was asked."""
    table = gce_catalog.TABLE
    live_zones = lookup.zones(s.project, s.region) if lookup else None
    if live_zones == [] and s.region in gce_catalog.ZONES:
        live_zones = None  # a region the project cannot see (org policy?): Google's own error says why
    asked = live_zones is not None
    zones = sorted(live_zones) if asked else gce_catalog.zones_of(s.region)
    source = f"project {s.project}" if asked else table
    if not zones:
        meant = suggest.closest(s.region, gce_catalog.REGIONS)
        reason = f"{s.region!r} is not a region ({source}){suggest.did_you_mean(meant)}"
        return [Problem("gcp:region", reason, f"a region such as asia-northeast1; list: gcloud compute regions list", suggest.fix_lines(set_line, "gcp:region", meant, ["asia-northeast1", "us-central1", "europe-west1"]))]
    problems = []
    path = f"{PROJECT}:vm.zone"
    if s.zone not in zones:
        meant = gce_catalog.closest_zone(s.zone, s.region) if not s.zone.startswith(s.region + "-") else []
        meant = [z for z in meant if z in zones] or suggest.closest(s.zone, zones)
        where = "is not a zone of" if s.zone.startswith(s.region + "-") else "is outside"
        problems.append(Problem(path, f"{s.zone!r} {where} region {s.region!r} ({source}){suggest.did_you_mean(meant)}", ", ".join(zones), suggest.fix_lines(set_line, path, meant, zones)))
        return problems
    problems += _check_machine_type(s, lookup if asked else None)
    return problems


def _check_machine_type(s: Settings, lookup: Optional[Lookup]) -> list[Problem]:
    name, path = s.vm.machine_type, f"{PROJECT}:vm.machineType"
    offline = gce_catalog.machine_type_problem(name)
    custom = "custom-" in name  # never listed by machineTypes.list: the table's shape rules decide
    live = lookup.machine_types(s.project, s.zone) if lookup and not custom else None
    if live:
        if name in live:
            return []
        meant = offline[1] if offline and offline[1] else suggest.closest(name, live)
        meant = [m for m in meant if m in live]
        reason = f"{name!r} is not offered in zone {s.zone} (project {s.project}){suggest.did_you_mean(meant)}"
        return [Problem(path, reason, "a machine type of the zone: gcloud compute machine-types list --zones " + s.zone, suggest.fix_lines(set_line, path, meant, ["e2-medium"]))]
    if offline is None:
        return []
    reason, meant = offline
    meant = meant or suggest.closest(name, gce_catalog.predefined())
    return [
        Problem(
            path,
            f"{reason} ({gce_catalog.TABLE}){suggest.did_you_mean(meant)}",
            "e2-micro/small/medium, <series>-standard|highmem|highcpu-<vCPUs> (e2, n1, n2, n2d, n4, t2d, c2, c2d, c3, c3d, c4), <series>-custom-<vCPUs>-<MB>",
            suggest.fix_lines(set_line, path, meant, ["e2-medium"]),
        )
    ]


def _check_mode(s: Settings) -> list[Problem]:
    problems = []
    if s.iam_auth and s.connection_mode != "proxy":
        problems.append(
            Problem(f"{PROJECT}:iamAuth", "IAM database login needs the Auth Proxy (--auto-iam-authn)", "true only with connectionMode proxy", set_line(f"{PROJECT}:iamAuth", "false"))
        )
    return problems


def _check_availability(s: Settings) -> list[Problem]:
    backups = s.database.backups
    problems = []
    if backups.point_in_time_recovery and backups.retained_backups < backups.transaction_log_retention_days:
        # Cloud SQL answers 400 "backup retention should be > transaction log retention" when the
        # log days exceed the retained backups (its own defaults, 7 and 7, are accepted).
        path = f"{PROJECT}:database.backups.retainedBackups"
        problems.append(
            Problem(
                path,
                f"{backups.retained_backups} retained backups are fewer than {backups.transaction_log_retention_days} days of transaction logs",
                f"at least transactionLogRetentionDays ({backups.transaction_log_retention_days}), or lower that",
                set_line(path, backups.transaction_log_retention_days),
            )
        )
    if s.database.availability != "REGIONAL":
        return problems
    for key, ok in (("enabled", backups.enabled), ("pointInTimeRecovery", backups.point_in_time_recovery)):
        if not ok:
            path = f"{PROJECT}:database.backups.{key}"
            problems.append(Problem(path, "REGIONAL availability needs backups with point-in-time recovery", "true", set_line(path, "true")))
    return problems


def _check_edition(s: Settings) -> list[Problem]:
    tier = s.tier
    reason = cloudsql.edition_problem(tier, s.database.edition)
    if reason is None:
        return []
    return [
        Problem(
            f"{PROJECT}:database.edition",
            reason,
            "ENTERPRISE with db-f1-micro, db-g1-small, db-custom-*; ENTERPRISE_PLUS with db-perf-optimized-N-*",
            set_line(f"{PROJECT}:database.edition", tier.edition),
        )
    ]


def _check_flags(s: Settings) -> list[Problem]:
    problems = []
    for name, value in sorted(s.database.flags.items()):
        path = f"{PROJECT}:database.flags{segment(name)}"
        try:
            api_value = convert_flag(name, value)
        except FlagError as error:
            if error.reason.startswith("unknown flag"):
                close = suggest.closest(name, list(FLAGS), limit=1)
                fix = rm_line(path) + (f" && {set_line(f'{PROJECT}:database.flags{segment(close[0])}', value)}" if close else "")
                problems.append(Problem(path, error.reason + suggest.did_you_mean(close), "flags: " + ", ".join(sorted(FLAGS)), fix))
            else:
                problems.append(_flag_value_problem(s, name, value, path, error))
            continue
        if name == "shared_buffers":
            memory = s.tier.memory_mb * 1024**2
            if flag_bytes(name, api_value) > memory * 0.6:
                limit = int(s.tier.memory_mb * 0.6)
                problems.append(Problem(path, f"{value} is more than 60% of the tier's {s.tier.memory_mb} MB", f"at most {limit}MB on {s.tier.name}", set_line(path, f"{limit // 256 * 256}MB")))
        if name == "cloudsql.iam_authentication" and api_value == "off" and s.iam_auth:
            problems.append(Problem(path, "iamAuth is on, and IAM login needs this flag on", "on", set_line(path, "on")))
    return problems


def _flag_value_problem(s: Settings, name: str, value: FlagValue, path: str, error: FlagError) -> Problem:
    """The value most likely meant: the unit spelt right (8mb → 8MB), the nearest bound when out
    of range, the nearest choice by spelling; unreadable: the default (the tier's for
    max_connections, Cloud SQL's otherwise, by removing the flag) — never the minimum."""
    spec = FLAGS[name]
    respelled = suggest.unit_respelled(value) if spec.kind in ("memory", "time") else None
    if respelled is not None and _converts(name, respelled):
        return Problem(path, f"{error.reason}{suggest.did_you_mean([respelled])}", error.allowed, set_line(path, respelled))
    if spec.kind in ("bool", "enum"):
        choices = ["on", "off"] if spec.kind == "bool" else list(spec.choices)
        meant = suggest.closest(value, choices)
        return Problem(path, error.reason + suggest.did_you_mean(meant), error.allowed, suggest.fix_lines(set_line, path, meant, choices))
    if error.reason.endswith("out of range"):
        try:
            number = _base_number(name, value)  # bounds are in the base unit
        except (ValueError, KeyError):
            number = None
        if number is not None:
            bound = spec.minimum if spec.minimum is not None and number < spec.minimum else spec.maximum
            shown = _in_base_unit(spec, bound)
            return Problem(path, f"{error.reason}; the nearest allowed value is {shown}", error.allowed, set_line(path, shown))
    if name == "max_connections":
        default = cloudsql.default_max_connections(s.tier)
        return Problem(path, f"{error.reason}; the fix sets tier {s.tier.name}'s default", error.allowed, set_line(path, default))
    return Problem(path, f"{error.reason}; removing the flag restores Cloud SQL's default", error.allowed, rm_line(path))


def _converts(name: str, value: str) -> bool:
    try:
        convert_flag(name, value)
    except FlagError:
        return False
    return True


def _base_number(name: str, value: FlagValue) -> float:
    """An out-of-range value in the flag's base unit (convert_flag checked the range last)."""
    from .flags import FLAGS as specs, _base_multiplier, _MEMORY_UNITS, _NUMBER_WITH_UNIT, _TIME_UNITS

    spec = specs[name]
    match = _NUMBER_WITH_UNIT.match(str(value))
    if not match:
        raise ValueError(value)
    number, unit = float(match.group(1)), match.group(2)
    if not unit or spec.kind in ("int", "real"):
        return number
    units = _MEMORY_UNITS if spec.kind == "memory" else _TIME_UNITS
    return number * units[unit] / _base_multiplier(spec)


def _in_base_unit(spec: Any, bound: float) -> str:
    text = str(int(bound)) if float(bound).is_integer() else str(bound)
    # "8kB" blocks have no PostgreSQL unit name: those stay plain integers in the base unit.
    return text + spec.base_unit if spec.kind in ("memory", "time") and spec.base_unit != "8kB" and bound >= 0 else text


def _check_pool(s: Settings) -> list[Problem]:
    limit = cloudsql.max_pool(s.max_connections)
    source = "database.flags.max_connections" if "max_connections" in s.database.flags else f"the default of tier {s.database.tier}"
    if limit < cloudsql.MIN_POOL:
        return [
            Problem(f"{PROJECT}:database.tier", f"max_connections {s.max_connections} ({source}) leaves no room for a Convex pool", "a larger tier or max_connections", set_line(f"{PROJECT}:database.flags.max_connections", 100))
        ]
    if s.convex.pool_size is not None and s.convex.pool_size > limit:
        return [
            Problem(
                f"{PROJECT}:convex.poolSize",
                f"{s.convex.pool_size} connections do not fit under max_connections {s.max_connections} ({source}) "
                f"minus {cloudsql.pool_headroom(s.max_connections)} kept free",
                f"1 to {limit}, or unset to derive it, or raise database.flags.max_connections",
                set_line(f"{PROJECT}:convex.poolSize", limit),
            )
        ]
    return []


def _check_domain(s: Settings) -> list[Problem]:
    """The front door's hosts, and the source ranges that cannot apply once the VM has no external IP."""
    d = s.domain
    if d is None:
        return []
    problems = []
    seen: dict[str, str] = {}
    for role, host in d.hosts.items():
        path = f"{PROJECT}:domain.{role}Host"
        if host in seen:
            problems.append(Problem(path, f"{host!r} is also the {seen[host]} host; each port needs its own name", "distinct host names", set_line(path, f"{role}.{host}")))
        seen.setdefault(host, role)
    for role, extra in d.additional_hosts.items():
        for i, host in enumerate(extra):
            path = f"{PROJECT}:domain.additionalHosts.{role}[{i}]"
            if role not in d.hosts:
                problems.append(Problem(path, f"there is no {role} host to serve {host!r} beside", f"additional hosts of api, site{', dashboard' if d.dashboard_host else ''}",
                                        f"pulumi config rm --path '{PROJECT}:domain.additionalHosts.{role}'"))
            elif host in seen:
                problems.append(Problem(path, f"{host!r} is also the {seen[host]} host", "a name no other role or entry uses",
                                        f"pulumi config rm --path '{path}'"))
            seen.setdefault(host, role)
    path = f"{PROJECT}:domain.dashboardHost"
    if s.convex.dashboard and not d.dashboard_host:
        problems.append(Problem(path, "the dashboard is enabled but has no host name on the front door", "a host name, or convex.dashboard false", set_line(path, "dashboard." + d.api_host.partition(".")[2])))
    if not s.convex.dashboard and d.dashboard_host:
        problems.append(Problem(path, "convex.dashboard is false, so there is nothing to route this host to", "unset, or convex.dashboard true", f"pulumi config rm --path '{path}'"))
    if d.dashboard_members and not d.dashboard_host:
        path = f"{PROJECT}:domain.dashboardMembers"
        problems.append(Problem(path, "there is no dashboard on the front door to grant access to", "unset without a dashboard host", f"pulumi config rm --path '{path}'"))
    armor = d.armor
    seen_priorities: dict[int, int] = {}
    for i, rule in enumerate(armor.rules if armor else []):
        path = f"{PROJECT}:domain.armor.rules[{i}]"
        if (rule.expression is None) == (not rule.src_ip_ranges):
            problems.append(Problem(path, "a rule needs exactly one match: expression or srcIpRanges", "expression (custom rules language) or srcIpRanges (CIDRs), not both",
                                    set_line(f"{path}.expression", "evaluatePreconfiguredWaf('sqli-v33-stable')")))
        if rule.priority in seen_priorities:
            free = next(p for p in range(1, ARMOR_USER_PRIORITY_MAX + 1) if p not in seen_priorities and p not in {r.priority for r in armor.rules})
            problems.append(Problem(f"{path}.priority", f"priority {rule.priority} is also rules[{seen_priorities[rule.priority]}]'s; Cloud Armor needs one rule per priority",
                                    f"a free priority from 1 to {ARMOR_USER_PRIORITY_MAX}", set_line(f"{path}.priority", free)))
        seen_priorities.setdefault(rule.priority, i)
    # Behind the front door the VM has no external IP: only private (VPC, peered, VPN) sources reach it.
    for key, ranges in (("apiSourceRanges", s.network.api_source_ranges), ("dashboardSourceRanges", s.network.dashboard_source_ranges)):
        public = [r for r in ranges if not ipaddress.ip_network(r).is_private]
        if public:
            path = f"{PROJECT}:network.{key}"
            problems.append(
                Problem(
                    path,
                    f"{', '.join(public)} cannot reach the VM: with a domain it has no external IP and clients come through the load balancer",
                    "private ranges only (VPC, peered networks, VPN); restrict public clients with domain.armor.allowRanges",
                    set_line(path, [r for r in ranges if r not in public]),
                )
            )
    return problems


def _check_prod(s: Settings) -> list[Problem]:
    if not s.is_prod:
        return []
    problems = []

    def need(path: str, ok: bool, reason: str, allowed: str, value: Any) -> None:
        if not ok:
            problems.append(Problem(f"{PROJECT}:{path}", f"{reason} (required when environment is prod)", allowed, set_line(f"{PROJECT}:{path}", value)))

    if s.connection_mode == "plaintext":
        # A specific message: plaintext is the one mode that sends passwords and data unencrypted.
        need("connectionMode", False, "'plaintext' sends database traffic, password included, unencrypted: it is for dev stacks only", "proxy", "proxy")
    else:
        need("connectionMode", s.connection_mode == "proxy", f"{s.connection_mode!r} is not the Auth Proxy", "proxy", "proxy")
    need("iamAuth", s.iam_auth, "password login is not allowed", "true", "true")
    need("database.deletionProtection", s.sql_deletion_protection, "the database must be protected from deletion", "true", "true")
    need("database.backups.enabled", s.database.backups.enabled, "backups are off", "true", "true")
    need("database.backups.pointInTimeRecovery", s.database.backups.point_in_time_recovery, "point-in-time recovery is off", "true", "true")
    need("database.connectorEnforcement", s.database.connector_enforcement, "direct connections would be allowed", "true", "true")
    if s.database.tier in cloudsql.SHARED_CORE_TIERS:
        need("database.tier", False, f"{s.database.tier} is shared-core, without an SLA", "db-custom-* or db-perf-optimized-N-*", "db-custom-2-7680")
    if "0.0.0.0/0" in s.network.dashboard_source_ranges:
        need("network.dashboardSourceRanges", False, "the dashboard would be open to the internet", "trusted ranges; the dashboard is also reachable through IAP", [])
    if s.domain is not None and s.domain.armor is not None and not s.domain.armor.enabled:
        need("domain.armor.enabled", False, "Cloud Armor (the per-client throttle, the admin ranges, your rules) would be off", "true", "true")
    if s.domain is None:
        # Browsers refuse plain HTTP to an IP for a production app; the front door gives HTTPS names.
        fix = " && ".join(set_line(f"{PROJECT}:domain.{key}", f"{role}.convex.example.com") for key, role in (("apiHost", "api"), ("siteHost", "site"), ("dashboardHost", "dashboard")))
        problems.append(
            Problem(
                f"{PROJECT}:domain",
                "the HTTPS front door is not configured; clients would reach Convex over plain HTTP on the VM's IP (required when environment is prod)",
                "an object with apiHost, siteHost, dashboardHost (when the dashboard is on) and optionally managedZone; see docs/front-door.md",
                fix,
            )
        )
    return problems


# RFC 2606 / RFC 6761 reserved names: documentation examples, never anyone's real host or mailbox.
_RESERVED_SUFFIXES = ("example.com", "example.net", "example.org", "example", "test", "invalid", "localhost")


def is_placeholder_domain(name: str) -> bool:
    labels = name.lower().rstrip(".").split(".")
    return any(".".join(labels[i:]) in _RESERVED_SUFFIXES for i in range(len(labels)))


def check_placeholders(s: Settings) -> list[Problem]:
    """Prod refuses the template's placeholder hosts, IAP members and alert emails: a certificate for
    api.convex.example.com never provisions, and an alert to oncall@example.com reaches nobody."""
    if not s.is_prod:
        return []
    found: list[tuple[str, str, str]] = []  # key path, value, example fix
    if s.domain is not None:
        for role, host in s.domain.hosts.items():
            found.append((f"domain.{role}Host", host, f"{role}.convex.<your-domain>"))
        for i, member in enumerate(s.domain.dashboard_members):
            found.append((f"domain.dashboardMembers[{i}]", member, "group:<admins>@<your-domain>"))
    for i, email in enumerate(s.monitoring.notification_emails):
        found.append((f"monitoring.notificationEmails[{i}]", email, "oncall@<your-domain>"))
    problems = []
    for key, value, example in found:
        domain = value.rpartition("@")[2] if "@" in value else value.partition(":")[2] or value
        if is_placeholder_domain(domain):
            path = f"{PROJECT}:{key}"
            problems.append(
                Problem(path, f"{value!r} is a reserved example name (RFC 2606), a template placeholder (required when environment is prod)",
                        "a real host, member or address in a domain you control", set_line(path, example))
            )
    return problems


def settings_warnings(settings: Settings) -> list[str]:
    """Allowed but risky choices, shown by `pulumi preview` as warnings."""
    warnings = []
    for key, (_, ranges) in _public_http_ranges(settings).items():
        if settings.network.public_http_without_tls:
            warnings.append(
                f"network.publicHttpWithoutTls is true: network.{key} {', '.join(ranges)} reach Convex over plain HTTP; "
                "the admin key crosses the internet unencrypted (use the IAP tunnel or a domain instead)"
            )
    if settings.monitoring_enabled and settings.domain is None and not settings.network.public_http_without_tls:
        warnings.append(
            "monitoring is on without a domain or network.publicHttpWithoutTls: the uptime check cannot reach "
            "Convex, which is only reachable through the IAP tunnel"
        )
    if "restarts_per_10_minutes" in settings.monitoring.model_fields_set:
        warnings.append("monitoring.restartsPer10Minutes has no effect any more: restarts alert through log-match conditions (docs/monitoring.md)")
    for resource in settings.unprotect:
        warnings.append(
            f"unprotect names {resource}: Pulumi's protect is off for it, so this update may delete or replace it "
            "(remove it from convex-gcp:unprotect once the deliberate change is done; docs/runbooks.md)"
        )
    if settings.connection_mode == "plaintext":
        warnings.append(
            "connectionMode is plaintext: traffic between Convex and Cloud SQL, the database password included, "
            "is NOT encrypted (dev only; use ssl or proxy for anything else)"
        )
    return warnings


def resource_prefix(stack: str) -> str:
    """Names of this stack's resources (VPC, VM, secrets, service account): convex-<stack>."""
    return f"convex-{stack}"


def config_from_pulumi() -> dict[str, Any]:
    """The stack's whole config map, as the Pulumi engine passed it to this program."""
    from pulumi.runtime import config as runtime_config

    merged: dict[str, Any] = dict(runtime_config.get_config_env())
    merged.update(runtime_config.CONFIG.get())
    return merged


# --------------------------------------------------------------------------- local target (docs/local.md)

TARGETS = ("gcp", "local")
# Exact tag from docker-library/postgres versions.json ("17": "17.9", variant bookworm); bump deliberately.
LOCAL_POSTGRES_TAG = "17.9-bookworm"
_LOCAL_TOP_LEVEL = {"target": "target", "environment": "environment", "convex": "convex", "local": "local"}
# Keys that only mean something on one target: naming them on the other is an error, not a silent no-op.
_GCP_ONLY = sorted(set(_TOP_LEVEL) - set(_LOCAL_TOP_LEVEL))
_LOCAL_ONLY = ["local"]


class LocalSettings(_Model):
    """`convex-gcp:local`: ports on 127.0.0.1 and the Postgres container."""

    api_port: int = Field(3210, ge=1024, le=65535)
    site_port: int = Field(3211, ge=1024, le=65535)
    dashboard_port: int = Field(6791, ge=1024, le=65535)
    # Published on 127.0.0.1 only, so tools/e2e.py can check the documents table.
    postgres_port: int = Field(5432, ge=1024, le=65535)
    postgres_tag: str = LOCAL_POSTGRES_TAG
    # Postgres' own default; the Convex pool is derived from it as on Cloud SQL.
    max_connections: int = Field(100, ge=20, le=10000)

    @field_validator("postgres_tag")
    @classmethod
    def _tag(cls, value: str) -> str:
        if not re.fullmatch(r"1[5-8]\.\d+(-(bookworm|trixie|alpine3\.\d+))?", value):
            raise _custom(f"{value!r} is not a pinned postgres image tag", "an exact 15..18 minor tag such as " + LOCAL_POSTGRES_TAG, LOCAL_POSTGRES_TAG)
        return value


class LocalStackSettings(_ConvexDerived, _Model):
    """A `convex-gcp:target: local` stack: Postgres, the backend and the dashboard on Docker."""

    stack: str
    target: Literal["local"] = "local"
    environment: Literal["dev"] = "dev"
    convex: ConvexSettings = ConvexSettings()
    local: LocalSettings = LocalSettings()

    # What runtime.backend_env reads, so the local containers get the VM's rendering.
    domain: None = None
    # On a private Docker network with no TLS on the server: the VM's plaintext wiring.
    connection_mode: Literal["plaintext"] = "plaintext"
    is_prod: bool = False

    @property
    def network(self) -> Any:
        # runtime.origins asks whether clients reach the host directly; here they do, on 127.0.0.1.
        from types import SimpleNamespace

        return SimpleNamespace(public_http_without_tls=True)

    @property
    def max_connections(self) -> int:
        return self.local.max_connections



def stack_target(config: dict[str, Any]) -> str:
    """`convex-gcp:target` (default gcp); an unknown value is reported by the loaders."""
    return str(config.get(f"{PROJECT}:target") or "gcp")


def _wrong_target(config: dict[str, Any], target: str) -> list[Problem]:
    problems = []
    if target == "local":
        foreign = [k for k in sorted(config) if k.startswith("gcp:")] + [f"{PROJECT}:{k}" for k in _GCP_ONLY if f"{PROJECT}:{k}" in config]
        for key in foreign:
            problems.append(Problem(key, "is a Google Cloud setting; a local stack runs on Docker and would ignore it", "on a local stack: convex-gcp:target, environment (dev), convex, local", rm_line(key)))
    else:
        for name in _LOCAL_ONLY:
            key = f"{PROJECT}:{name}"
            if key in config:
                problems.append(Problem(key, "is a setting of local (Docker) stacks; this stack deploys to Google Cloud", "unset, or convex-gcp:target local on a stack without gcp:* keys", rm_line(key)))
    return problems


def check_target(config: dict[str, Any]) -> list[Problem]:
    target = stack_target(config)
    if target not in TARGETS:
        path = f"{PROJECT}:target"
        return [Problem(path, f"{target!r} is not a target", "gcp (default) or local", set_line(path, "local"))]
    return _wrong_target(config, target)


def load_local_settings(config: dict[str, Any], stack: str) -> LocalStackSettings:
    """Build a local stack's settings; GCP-only keys are errors. Raise ConfigError."""
    problems = check_target(config)
    raw: dict[str, Any] = {"stack": stack}
    for key, value in config.items():
        namespace, _, name = key.partition(":")
        if namespace != PROJECT or name in _GCP_ONLY:
            continue  # reported by check_target
        if name not in _LOCAL_TOP_LEVEL:
            problems.append(Problem(key, "unknown key", "keys on a local stack: " + ", ".join(_LOCAL_TOP_LEVEL), rm_line(key)))
            continue
        raw[name] = value if name in ("target", "environment") else _parse_value(value)
    try:
        settings = LocalStackSettings.model_validate(raw)
    except ValidationError as error:
        problems += [_local_problem(e) for e in error.errors(include_url=False)]
        raise ConfigError(problems, stack) from None
    problems += convex_env.problems(settings.convex.env)
    limit = cloudsql.max_pool(settings.max_connections)
    if settings.convex.pool_size is not None and settings.convex.pool_size > limit:
        path = f"{PROJECT}:convex.poolSize"
        problems.append(Problem(path, f"{settings.convex.pool_size} connections do not fit under local.maxConnections {settings.max_connections} minus {cloudsql.pool_headroom(settings.max_connections)} kept free", f"1 to {limit}, or unset to derive it", set_line(path, limit)))
    ports = {"apiPort": settings.local.api_port, "sitePort": settings.local.site_port, "dashboardPort": settings.local.dashboard_port, "postgresPort": settings.local.postgres_port}
    seen: dict[int, str] = {}
    for key, port in ports.items():
        if port in seen:
            path = f"{PROJECT}:local.{key}"
            problems.append(Problem(path, f"port {port} is also local.{seen[port]}", "a distinct port on 127.0.0.1", set_line(path, max(ports.values()) + 1)))
        seen.setdefault(port, key)
    if problems:
        raise ConfigError(problems, stack)
    return settings


def _local_problem(error: dict[str, Any]) -> Problem:
    """The shared pydantic → Problem rendering, against the local model's key names."""
    return problem_from_pydantic(error, LocalStackSettings)
