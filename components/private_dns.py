"""PrivateDns: makes the Cloud SQL instance's own DNS name resolve to its private IP inside our VPC,
so Convex can connect by the name its server certificate carries (connectionMode ssl)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_gcp as gcp


@dataclass
class PrivateDnsArgs:
    prefix: str
    network: pulumi.Input[str]
    # The instance's PRIVATE_SERVICES_ACCESS name, without the trailing dot.
    dns_name: pulumi.Input[str]
    private_ip: pulumi.Input[str]
    labels: dict[str, str] = field(default_factory=dict)
    depends_on: list[pulumi.Resource] = field(default_factory=list)


def fqdn(name: str) -> str:
    if not name:
        # Cloud SQL lists this name only for instances whose server CA mode issues it.
        raise ValueError(
            "the Cloud SQL instance reports no PRIVATE_SERVICES_ACCESS DNS name; connectionMode ssl needs "
            "server_ca_mode GOOGLE_MANAGED_CAS_CA (see docs/connection-modes.md)"
        )
    return name.rstrip(".") + "."


class PrivateDns(pulumi.ComponentResource):
    """Owns a private Cloud DNS zone whose apex is exactly the instance's DNS name (it shadows no
    other name) and the A record at that apex pointing at the instance's private IP."""

    def __init__(self, name: str, args: PrivateDnsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("convex-gcp:index:PrivateDns", name, None, opts)
        zone_name = pulumi.Output.from_input(args.dns_name).apply(fqdn)
        self.zone = gcp.dns.ManagedZone(
            f"{name}-zone",
            name=f"{args.prefix}-sql"[:63],
            dns_name=zone_name,
            description="Cloud SQL instance name -> private IP, for TLS host name verification",
            visibility="private",
            private_visibility_config=gcp.dns.ManagedZonePrivateVisibilityConfigArgs(
                networks=[gcp.dns.ManagedZonePrivateVisibilityConfigNetworkArgs(network_url=args.network)]
            ),
            labels=args.labels,
            opts=pulumi.ResourceOptions(parent=self, depends_on=args.depends_on),
        )
        self.record = gcp.dns.RecordSet(
            f"{name}-a",
            managed_zone=self.zone.name,
            name=self.zone.dns_name,
            type="A",
            # Short: the private IP only changes when the instance is replaced.
            ttl=300,
            rrdatas=[args.private_ip],
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"zone": self.zone.name, "name": self.record.name})
