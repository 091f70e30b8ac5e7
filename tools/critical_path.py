"""Estimated critical path of a first `pulumi up`, from the offline plan's dependency graph.

Each resource starts when everything it depends on has finished (the engine creates independent
resources in parallel) and takes a typical creation time for its type (TYPICAL below). The Convex
deployment is healthy when the VM has booted and pulled its images (BOOT_AND_PULL after the VM) and the
database and its user exist, plus CONVERGE for the backend to connect. The figure to watch is the ratio
against the path that ends at the Convex database, which no wiring can shorten.

`python -m tools.plan <stack>` prints it (this module only computes; it imports nothing of the plan's).

Times are estimates for comparing wirings, not measurements: Cloud SQL dominates every path.
"""

from __future__ import annotations

from dataclasses import dataclass

# Typical create time in seconds, per resource type, and why. Sources: the operations' usual duration as
# Google documents or as commonly observed, rounded; the provider's own timeouts bound them from above.
TYPICAL: dict[str, tuple[int, str]] = {
    "gcp:projects/service:Service": (30, "services.enable is a long-running operation, usually under a minute"),
    "pulumi-python:dynamic:Resource": (90, "components/apis.py: the propagation wait after enabling APIs (first deploy only)"),
    "gcp:compute/network:Network": (25, "global operation"),
    "gcp:compute/subnetwork:Subnetwork": (20, "regional operation"),
    "gcp:compute/router:Router": (15, "regional operation"),
    "gcp:compute/routerNat:RouterNat": (20, "router patch"),
    "gcp:compute/firewall:Firewall": (10, "global operation"),
    "gcp:compute/globalAddress:GlobalAddress": (10, "global operation"),
    "gcp:compute/address:Address": (5, "regional operation"),
    "gcp:servicenetworking/connection:Connection": (60, "VPC peering with servicenetworking: about a minute"),
    "gcp:sql/databaseInstance:DatabaseInstance": (600, "Cloud SQL create: 5-15 minutes; 10 taken (provider timeout 90)"),
    "gcp:sql/database:Database": (20, "Cloud SQL operation, serialized per instance"),
    "gcp:sql/user:User": (15, "Cloud SQL operation, serialized per instance"),
    "gcp:serviceaccount/account:Account": (5, "IAM, synchronous"),
    "gcp:projects/iAMMember:IAMMember": (10, "getIamPolicy/setIamPolicy round trip"),
    "gcp:secretmanager/secret:Secret": (3, "synchronous"),
    "gcp:secretmanager/secretVersion:SecretVersion": (3, "synchronous"),
    "gcp:secretmanager/secretIamMember:SecretIamMember": (5, "IAM policy round trip"),
    "gcp:compute/disk:Disk": (10, "zonal operation"),
    "gcp:compute/instance:Instance": (40, "zonal insert operation until RUNNING"),
    "gcp:compute/instanceTemplate:InstanceTemplate": (5, "global operation"),
    "gcp:compute/instanceGroupManager:InstanceGroupManager": (15, "zonal operation; empty until its per-instance config"),
    "gcp:compute/perInstanceConfig:PerInstanceConfig": (45, "createInstances: the group creates the VM until RUNNING"),
    "gcp:compute/resourcePolicy:ResourcePolicy": (10, "regional operation"),
    "gcp:compute/diskResourcePolicyAttachment:DiskResourcePolicyAttachment": (10, "zonal operation"),
    "gcp:compute/managedSslCertificate:ManagedSslCertificate": (10, "insert only; provisioning continues in the background"),
    "gcp:compute/sSLPolicy:SSLPolicy": (10, "global operation"),
    "gcp:compute/instanceGroup:InstanceGroup": (10, "zonal operation"),
    "gcp:compute/instanceGroupMembership:InstanceGroupMembership": (10, "addInstances operation"),
    "gcp:compute/healthCheck:HealthCheck": (10, "global operation"),
    "gcp:compute/securityPolicy:SecurityPolicy": (15, "global operation"),
    "gcp:compute/backendService:BackendService": (30, "global operation"),
    "gcp:compute/uRLMap:URLMap": (15, "global operation"),
    "gcp:compute/targetHttpsProxy:TargetHttpsProxy": (15, "global operation"),
    "gcp:compute/targetHttpProxy:TargetHttpProxy": (15, "global operation"),
    "gcp:compute/globalForwardingRule:GlobalForwardingRule": (30, "global operation"),
    "gcp:iap/webBackendServiceIamMember:WebBackendServiceIamMember": (10, "IAM policy round trip"),
    "gcp:dns/managedZone:ManagedZone": (10, "synchronous"),
    "gcp:dns/recordSet:RecordSet": (5, "change, usually done in seconds"),
    "gcp:monitoring/notificationChannel:NotificationChannel": (3, "synchronous"),
    "gcp:monitoring/uptimeCheckConfig:UptimeCheckConfig": (5, "synchronous"),
    "gcp:monitoring/alertPolicy:AlertPolicy": (5, "synchronous"),
}
DEFAULT_SECONDS = 5
# Boot of COS, startup script, pulling the three images (about 150 MB compressed for the backend) over NAT.
BOOT_AND_PULL = 120
# The backend connects (the proxy is up already) and answers /version.
CONVERGE = 20
# The resource whose creation starts the VM: the group's per-instance config (createInstances).
VM = "gcp:compute/perInstanceConfig:PerInstanceConfig"
DATABASE = "gcp:sql/database:Database"
USER = "gcp:sql/user:User"


@dataclass
class Estimate:
    finish: dict[str, int]  # urn -> seconds from start
    healthy: int
    healthy_path: list[str]  # names along the longest path to healthy
    database: int
    database_path: list[str]

    @property
    def ratio(self) -> float:
        return self.healthy / self.database if self.database else 0.0


def _name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def estimate(plan) -> Estimate:
    """Longest-path finish times over the plan's custom resources (plan: tools.plan.Plan)."""
    custom = {r.urn: r for r in plan.resources if r.custom}
    finish: dict[str, int] = {}
    via: dict[str, str | None] = {}

    def done(urn: str) -> int:
        if urn in finish:
            return finish[urn]
        r = custom[urn]
        # Sorted: the SDK's dependency order varies between runs, and ties must name the same resource.
        deps = sorted(d for d in r.dependencies if d in custom and d != urn)
        start, prev = 0, None
        for d in deps:
            if done(d) > start:
                start, prev = done(d), d
        finish[urn] = start + TYPICAL.get(r.type, (DEFAULT_SECONDS, ""))[0]
        via[urn] = prev
        return finish[urn]

    for urn in custom:
        done(urn)

    def path(urn: str | None) -> list[str]:
        names = []
        while urn:
            names.append(_name(urn))
            urn = via[urn]
        return names[::-1]

    def last(typ: str) -> str | None:
        urns = [u for u, r in custom.items() if r.type == typ]
        return max(urns, key=lambda u: finish[u]) if urns else None

    vm, db, user = last(VM), last(DATABASE), last(USER)
    ends = {u: finish[u] for u in (db, user) if u}
    candidates = [(finish[vm] + BOOT_AND_PULL, vm, "boot and image pulls")] if vm else []
    candidates += [(t, u, "") for u, t in ends.items()]
    end_time, end_urn, extra = max(candidates, key=lambda c: c[0])
    healthy_path = path(end_urn) + ([extra] if extra else []) + ["backend connects"]
    return Estimate(finish, end_time + CONVERGE, healthy_path, finish[db] if db else 0, path(db))


def render(e: Estimate) -> list[str]:
    return [
        "## Estimated critical path (first deploy)",
        "",
        f"- deploy to healthy: {e.healthy} s: {' → '.join(e.healthy_path)}",
        f"- the chain to the Convex database alone: {e.database} s: {' → '.join(e.database_path)}",
        f"- ratio: {e.ratio:.2f} (goal ≤ 1.10; typical times per type in tools/critical_path.py)",
    ]
