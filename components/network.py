"""Network: the VPC and subnet (or an existing network), Cloud NAT, firewall rules, and the
private services access range with its service networking peering for Cloud SQL."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pulumi
import pulumi_gcp as gcp

from convex_gcp.runtime import API_PORT, DASHBOARD_PORT, SITE_PORT

VM_TAG = "convex-backend"


@dataclass
class NetworkArgs:
    prefix: str
    region: str
    subnet_cidr: str
    private_services_prefix_length: int
    api_source_ranges: list[str]
    dashboard_source_ranges: list[str]
    ssh_source_ranges: list[str]
    iap_range: str
    is_prod: bool
    iap_ports: list[int] = field(default_factory=lambda: [22])
    existing_network: Optional[str] = None
    existing_subnetwork: Optional[str] = None
    # Adoption (convex_gcp/adoption.py): an existing range and its peering, imported.
    peering_range_name: Optional[str] = None
    peering_range_import_id: Optional[str] = None
    connection_import_id: Optional[str] = None
    # The HTTPS front door: Google's proxy and health-check ranges, and the VM ports they reach.
    load_balancer_ranges: list[str] = field(default_factory=list)
    load_balancer_ports: list[int] = field(default_factory=list)
    # Autohealing: Google's health checkers reach the VM's health endpoint (vm/health/) from these.
    health_check_ranges: list[str] = field(default_factory=list)
    health_check_port: int = 0
    depends_on: list[pulumi.Resource] = field(default_factory=list)


def peering_deletion_policy(created_network: bool, is_prod: bool) -> str:
    """How destroy treats the peering. A throwaway dev VPC removes it so the VPC can go too;
    prod and shared networks keep it, because deleting it while Cloud SQL uses it fails."""
    return "REMOVE_PEERING" if created_network and not is_prod else "ABANDON"


class Network(pulumi.ComponentResource):
    """Owns the VPC, subnet, router and NAT, firewall rules, PSA range and peering."""

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("convex-gcp:index:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, depends_on=args.depends_on)
        created = args.existing_network is None

        if created:
            vpc = gcp.compute.Network(
                f"{name}-vpc",
                name=f"{args.prefix}-vpc",
                auto_create_subnetworks=False,
                routing_mode="REGIONAL",
                description="Convex backend and its Cloud SQL private services access",
                opts=child,
            )
            subnet = gcp.compute.Subnetwork(
                f"{name}-subnet",
                name=f"{args.prefix}-{args.region}",
                network=vpc.id,
                region=args.region,
                ip_cidr_range=args.subnet_cidr,
                # Lets the VM reach Google APIs without an external route.
                private_ip_google_access=True,
                log_config=gcp.compute.SubnetworkLogConfigArgs(aggregation_interval="INTERVAL_10_MIN", flow_sampling=0.5),
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.network_id: pulumi.Output[str] = vpc.id
            self.network_name: pulumi.Output[str] = vpc.name
            self.network_self_link: pulumi.Output[str] = vpc.self_link
            self.subnetwork_id: pulumi.Output[str] = subnet.id
            self.subnetwork_name: pulumi.Output[str] = subnet.name
        else:
            existing = gcp.compute.get_network_output(name=args.existing_network)
            existing_subnet = gcp.compute.get_subnetwork_output(name=args.existing_subnetwork or args.existing_network, region=args.region)
            self.network_id = existing.id
            self.network_name = existing.name
            self.network_self_link = existing.self_link
            self.subnetwork_id = existing_subnet.id
            self.subnetwork_name = existing_subnet.name

        router = gcp.compute.Router(
            f"{name}-router",
            name=f"{args.prefix}-router",
            network=self.network_id,
            region=args.region,
            opts=child,
        )
        # Egress for image pulls (ghcr.io, gcr.io) that does not depend on the VM's external IP.
        gcp.compute.RouterNat(
            f"{name}-nat",
            name=f"{args.prefix}-nat",
            router=router.name,
            region=args.region,
            nat_ip_allocate_option="AUTO_ONLY",
            source_subnetwork_ip_ranges_to_nat="LIST_OF_SUBNETWORKS",
            subnetworks=[
                gcp.compute.RouterNatSubnetworkArgs(name=self.subnetwork_id, source_ip_ranges_to_nats=["ALL_IP_RANGES"])
            ],
            log_config=gcp.compute.RouterNatLogConfigArgs(enable=True, filter="ERRORS_ONLY"),
            opts=pulumi.ResourceOptions(parent=self),
        )

        self.firewall_rules = []

        def allow(rule: str, ports: list[int], ranges: list[str], description: str) -> None:
            if not ranges:
                return
            self.firewall_rules.append(
                gcp.compute.Firewall(
                    f"{name}-allow-{rule}",
                    name=f"{args.prefix}-allow-{rule}",
                    network=self.network_id,
                    direction="INGRESS",
                    allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=[str(p) for p in ports])],
                    source_ranges=sorted(ranges),
                    target_tags=[VM_TAG],
                    description=description,
                    log_config=gcp.compute.FirewallLogConfigArgs(metadata="INCLUDE_ALL_METADATA") if args.is_prod else None,
                    opts=child,
                )
            )

        # IAP TCP forwarding (gcloud compute start-iap-tunnel): SSH, the Convex API and site, the dashboard.
        # Without a domain this is how clients reach Convex unless network.publicHttpWithoutTls opens them.
        iap_ports = sorted(set(args.iap_ports) | {API_PORT, SITE_PORT})
        allow("iap", iap_ports, [args.iap_range], "SSH, the Convex API and the dashboard through IAP TCP forwarding")
        allow("ssh", [22], [r for r in args.ssh_source_ranges if r != args.iap_range], "SSH from configured ranges")
        allow("api", [API_PORT, SITE_PORT], args.api_source_ranges, "Convex API, sync websocket and HTTP actions")
        allow("dashboard", [DASHBOARD_PORT], args.dashboard_source_ranges, "Convex dashboard")
        # With the front door the VM has no external IP; the rules above then only admit private
        # (VPC, peered, VPN) sources, and public clients come only through the load balancer.
        if args.load_balancer_ports:
            allow("lb", args.load_balancer_ports, args.load_balancer_ranges, "Google front ends and health checks of the HTTPS front door")

        if args.health_check_port:
            allow("autoheal", [args.health_check_port], args.health_check_ranges, "Google health checkers: the VM group's autohealing probe")

        adopted_range = args.peering_range_import_id is not None
        self.peering_range = gcp.compute.GlobalAddress(
            f"{name}-psa-range",
            name=args.peering_range_name or f"{args.prefix}-psa",
            purpose="VPC_PEERING",
            address_type="INTERNAL",
            prefix_length=args.private_services_prefix_length,
            network=self.network_id,
            # description forces replacement; an adopted range (the seed's) has none.
            description=None if adopted_range else "Private services access for Cloud SQL",
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(import_=args.peering_range_import_id)),
        )
        self.connection = gcp.servicenetworking.Connection(
            f"{name}-psa-connection",
            network=self.network_id,
            service="servicenetworking.googleapis.com",
            reserved_peering_ranges=[self.peering_range.name],
            deletion_policy=peering_deletion_policy(created, args.is_prod),
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(import_=args.connection_import_id)),
        )

        self.register_outputs(
            {
                "network": self.network_name,
                "subnetwork": self.subnetwork_name,
                "peering_range": self.peering_range.name,
                "connection": self.connection.id,
            }
        )
