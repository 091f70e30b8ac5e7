"""ConvexVm: the Container-Optimized OS VM as a stateful managed instance group of one: an instance
template, a zonal group with autohealing, and a per-instance config that keeps the VM's name, its data
disk and its internal IP (and external IP, when it has one) across every recreation. The startup script
(vm/startup.sh) runs the Auth Proxy, the Convex backend and the dashboard. See docs/updates.md."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_docker as docker
import pulumi_gcp as gcp

from convex_gcp import images
from convex_gcp.runtime import API_PORT, DASHBOARD_PORT, DATA_DEVICE_NAME, HEALTH_PATH, HEALTH_PORT, SITE_PORT, RuntimeInputs, instance_metadata, origins, vm_dir
from convex_gcp.settings import Settings

STARTUP_SCRIPT = vm_dir() / "startup.sh"

# cloud-platform is the only scope Secret Manager accepts; sqlservice.admin is named too so the
# proxy's need is explicit (the seed's bare "sqlservice" scope is deprecated). IAM roles gate access.
VM_SCOPES = [
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/sqlservice.admin",
]


def image_tags(s: Settings) -> dict[str, str]:
    """The pinned `repo:tag` of every image the VM runs, by its runtime key."""
    refs = {"BACKEND_IMAGE": images.BACKEND_IMAGE.format(tag=s.convex.version)}
    if s.convex.dashboard:
        refs["DASHBOARD_IMAGE"] = images.DASHBOARD_IMAGE.format(tag=s.convex.version)
    if s.connection_mode == "proxy":
        refs["PROXY_IMAGE"] = images.PROXY_IMAGE.format(tag=s.convex.proxy_version)
    if s.monitoring_enabled:
        refs["COLLECTOR_IMAGE"] = images.COLLECTOR_IMAGE
    return refs


# The group's named ports; the front door's backend services pick theirs by name.
NAMED_PORTS = {"api": API_PORT, "site": SITE_PORT, "dashboard": DASHBOARD_PORT}
NIC = "nic0"

# Autohealing (docs/updates.md, "Autohealing"). The signal is vm/health/health.sh: it answers 200 while
# Convex serves (its migrations run in the background while /version answers), while a convex-gcp run is in
# progress and while the backend container runs but has not bound /version yet (connecting, loading the
# database), so neither a first boot, a long start nor a migration of any length reads as a dead VM. The delay only has to cover COS booting and cloud-init starting the socket (tens of seconds);
# 300 s leaves room. A VM is repaired after UNHEALTHY_THRESHOLD consecutive failed probes,
# CHECK_INTERVAL_SEC apart: a minute of "down" (nothing running Convex, nothing on its way to it).
AUTOHEAL_INITIAL_DELAY_SEC = 300
CHECK_INTERVAL_SEC, CHECK_TIMEOUT_SEC = 10, 5
HEALTHY_THRESHOLD, UNHEALTHY_THRESHOLD = 2, 6


def update_policy() -> gcp.compute.InstanceGroupManagerUpdatePolicyArgs:
    """How a new template reaches the one VM (terraform-provider-google
    website/docs/r/compute_instance_group_manager.html.markdown, `update_policy`):
    - PROACTIVE: the group applies it now, not at the next recreation.
    - minimal_action REFRESH: a metadata-only change (config, Convex image digests) is applied without
      stopping the VM ("Compute Engine does not need to restart a VM to change its metadata", API
      reference InstanceGroupManagerUpdatePolicy.minimalAction); vm/startup.sh's watcher applies it.
      Anything more (boot image, machine type) escalates up to most_disruptive_allowed_action REPLACE.
    - replacement_method RECREATE keeps the instance name (and with it the per-instance config: disk, IP);
      with max_surge 0 the old VM is deleted before the new one is created, so two VMs never hold the
      data disk (a zonal pd-* disk attaches READ_WRITE to one instance only, a second safeguard);
      max_unavailable 1 lets that one VM go."""
    return gcp.compute.InstanceGroupManagerUpdatePolicyArgs(
        type="PROACTIVE",
        minimal_action="REFRESH",
        most_disruptive_allowed_action="REPLACE",
        replacement_method="RECREATE",
        max_surge_fixed=0,
        max_unavailable_fixed=1,
    )


@dataclass
class ConvexVmArgs:
    settings: Settings
    prefix: str
    subnetwork: pulumi.Input[str]
    network_tag: str
    service_account_email: pulumi.Input[str]
    connection_name: pulumi.Input[str]
    database_user: pulumi.Input[str]
    instance_secret_id: pulumi.Input[str]
    admin_key_secret_id: pulumi.Input[str]
    db_password_secret_id: pulumi.Input[str] = ""
    # Where Convex connects in ssl mode (the instance's DNS name) and plaintext mode (its private IP).
    sql_dns_name: pulumi.Input[str] = ""
    sql_private_ip: pulumi.Input[str] = ""
    export_bucket: pulumi.Input[str] = ""  # components/exports.py; empty: no scheduled exports
    depends_on: list[pulumi.Resource] = field(default_factory=list)


class ConvexVm(pulumi.ComponentResource):
    """Owns the data disk, the VM's addresses, its instance template, the autohealing health check, the
    managed instance group and the per-instance config that names the one VM."""

    def __init__(self, name: str, args: ConvexVmArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("convex-gcp:index:ConvexVm", name, None, opts)
        s = args.settings
        labels = s.labels
        outer = opts.depends_on if opts else None
        self.vm_name = s.adopt.vm or f"{args.prefix}-vm"

        # Only a stack that serves plain HTTP to the internet (network.publicHttpWithoutTls) has an external
        # IP. Otherwise clients come through the front door or an IAP tunnel, and image pulls through Cloud NAT.
        self.address = None
        if s.domain is None and s.network.public_http_without_tls:
            self.address = gcp.compute.Address(
                f"{name}-ip",
                name=f"{args.prefix}-ip",
                region=s.region,
                address_type="EXTERNAL",
                network_tier="PREMIUM",
                opts=pulumi.ResourceOptions(parent=self, protect=s.is_prod, depends_on=outer),
            )
        public_host: pulumi.Input[str] = self.address.address if self.address else ""
        # The VM's internal IP, reserved so every recreation gets it back (preserved state below).
        # vm.internalIp keeps the address a bare VM had when a stack moves to the group (docs/updates.md).
        self.internal_address = gcp.compute.Address(
            f"{name}-internal-ip",
            name=f"{args.prefix}-vm-internal",
            region=s.region,
            address_type="INTERNAL",
            subnetwork=args.subnetwork,
            address=s.vm.internal_ip,
            opts=pulumi.ResourceOptions(parent=self, depends_on=outer),
        )
        # /convex/data holds files, modules and search snapshots that must match the database: protected in
        # every stack (the engine refuses to delete or replace it; docs/runbooks.md, "Replace the data disk").
        self.data_disk = gcp.compute.Disk(
            f"{name}-data",
            name=f"{args.prefix}-data",
            zone=s.zone,
            type=s.vm.data_disk_type,
            size=s.vm.data_disk_size_gb,
            labels=labels,
            opts=pulumi.ResourceOptions(parent=self, protect=s.protects("dataDisk"), depends_on=outer),
        )

        # Each image by the digest convex_gcp/pins.json records for its tag: no registry is asked at preview, and
        # a tag moved later changes nothing until a reviewed bump commit changes the pin (docs/updates.md). A tag
        # without a recorded digest (not resolved yet, or a version set in the stack's config) is looked up at
        # preview as a stopgap, with a warning: HTTP only (kreuzwerker/terraform-provider-docker
        # data_source_docker_registry_image.go: HEAD on the manifest, anonymous bearer token on a 401), no Docker
        # daemon (disable_docker_daemon_check, provider PR #703), and an HTTP client without a timeout.
        refs = image_tags(s)
        recorded = {key: images.pinned_digest(ref) for key, ref in refs.items()}
        unresolved = sorted(ref for key, ref in refs.items() if recorded[key] is None)
        registry = None
        if unresolved:
            pulumi.log.warn(f"convex_gcp/pins.json has no digest for {', '.join(unresolved)}: this preview asks the registry. "
                            "Pin them: run the bump workflow (Actions, 'Bump pins') or python -m tools.bump --add <image:tag> --write.")
            registry = docker.Provider(f"{name}-registry", disable_docker_daemon_check=True, opts=pulumi.ResourceOptions(parent=self))
        pinned = pulumi.Output.all(
            **{
                key: images.by_digest(ref, recorded[key])
                if recorded[key]
                else docker.get_registry_image_output(name=ref, opts=pulumi.InvokeOptions(provider=registry, parent=self)).sha256_digest.apply(
                    lambda digest, ref=ref: images.by_digest(ref, digest)
                )
                for key, ref in refs.items()
            }
        )
        self.pinned_images = pinned

        metadata = pulumi.Output.all(
            pinned,
            args.connection_name,
            public_host,
            args.database_user,
            args.instance_secret_id,
            args.admin_key_secret_id,
            args.db_password_secret_id,
            args.sql_dns_name,
            args.sql_private_ip,
            args.export_bucket,
        ).apply(
            lambda v: instance_metadata(
                s,
                RuntimeInputs(
                    project=s.project,
                    connection_name=v[1],
                    public_host=v[2],
                    database_user=v[3],
                    instance_secret_id=v[4],
                    admin_key_secret_id=v[5],
                    db_password_secret_id=v[6] or "",
                    sql_dns_name=v[7] or "",
                    sql_private_ip=v[8] or "",
                    pinned_images=dict(v[0]),
                    export_bucket=v[9] or "",
                ),
                STARTUP_SCRIPT.read_text(),
            )
        )

        # Templates are immutable: every change is a new template. name_prefix lets the engine create the new
        # one before the group moves to it and the old one is deleted (a fixed name would be delete-first, and
        # Google refuses to delete a template a group uses).
        self.template = gcp.compute.InstanceTemplate(
            f"{name}-template",
            name_prefix=f"{args.prefix}-vm-",
            machine_type=s.vm.machine_type,
            tags=[args.network_tag],
            labels=labels,
            disks=[
                gcp.compute.InstanceTemplateDiskArgs(
                    boot=True,
                    auto_delete=True,
                    source_image=s.vm.image_link,
                    disk_size_gb=s.vm.boot_disk_size_gb,
                    disk_type="pd-balanced",
                    labels=labels,
                ),
                # The existing data disk by name, never auto-deleted; the per-instance config below keeps it.
                gcp.compute.InstanceTemplateDiskArgs(
                    source=self.data_disk.name, device_name=DATA_DEVICE_NAME, mode="READ_WRITE", auto_delete=False, boot=False
                ),
            ],
            network_interfaces=[
                gcp.compute.InstanceTemplateNetworkInterfaceArgs(
                    subnetwork=args.subnetwork,
                    access_configs=[gcp.compute.InstanceTemplateNetworkInterfaceAccessConfigArgs(network_tier="PREMIUM")] if self.address else [],
                )
            ],
            service_account=gcp.compute.InstanceTemplateServiceAccountArgs(email=args.service_account_email, scopes=VM_SCOPES),
            shielded_instance_config=gcp.compute.InstanceTemplateShieldedInstanceConfigArgs(
                enable_secure_boot=True, enable_vtpm=True, enable_integrity_monitoring=True
            ),
            # The "startup-script" key is read at boot; the VM's watcher applies later changes in place.
            metadata=metadata,
            scheduling=gcp.compute.InstanceTemplateSchedulingArgs(automatic_restart=True, on_host_maintenance="MIGRATE"),
            opts=pulumi.ResourceOptions(parent=self, depends_on=args.depends_on),
        )

        # Autohealing's probe: vm/health/health.sh on HEALTH_PORT (never /version alone, which is silent while
        # Convex connects and loads its database, and during a boot). The front door keeps its own /version
        # check for traffic.
        self.health_check = gcp.compute.HealthCheck(
            f"{name}-autoheal",
            name=f"{args.prefix}-autoheal",
            check_interval_sec=CHECK_INTERVAL_SEC,
            timeout_sec=CHECK_TIMEOUT_SEC,
            healthy_threshold=HEALTHY_THRESHOLD,
            unhealthy_threshold=UNHEALTHY_THRESHOLD,
            http_health_check=gcp.compute.HealthCheckHttpHealthCheckArgs(port=HEALTH_PORT, request_path=HEALTH_PATH),
            log_config=gcp.compute.HealthCheckLogConfigArgs(enable=True),
            opts=pulumi.ResourceOptions(parent=self, depends_on=outer),
        )

        # A group of one. No target_size: the per-instance config's createInstances sets it to 1, and the
        # field is Optional+Computed in the provider, so no later update sizes the group back to 0
        # (resource_compute_instance_group_manager.go "target_size"; cloud-foundation-fabric
        # modules/compute-mig, "Stateful MIGs - Instance Config"). A creation that fails (stockout, quota)
        # stays a managed instance the group keeps trying to create: createInstances is DONE once accepted,
        # and a group retries creations "continuously until it succeeds" unless asked not to
        # (Compute API reference, instanceGroupManagers.createInstances; noCreationRetries).
        self.group = gcp.compute.InstanceGroupManager(
            f"{name}-group",
            name=f"{args.prefix}-vm-group",
            zone=s.zone,
            base_instance_name=f"{args.prefix}-vm",
            description="The Convex VM: a stateful group of one (docs/updates.md)",
            versions=[gcp.compute.InstanceGroupManagerVersionArgs(name="convex", instance_template=self.template.self_link_unique)],
            named_ports=[gcp.compute.InstanceGroupManagerNamedPortArgs(name=role, port=port) for role, port in NAMED_PORTS.items()],
            auto_healing_policies=gcp.compute.InstanceGroupManagerAutoHealingPoliciesArgs(
                health_check=self.health_check.id, initial_delay_sec=AUTOHEAL_INITIAL_DELAY_SEC
            ),
            # Stateful policy: whatever instance the group makes keeps the data disk and the internal IP.
            stateful_disks=[gcp.compute.InstanceGroupManagerStatefulDiskArgs(device_name=DATA_DEVICE_NAME, delete_rule="NEVER")],
            stateful_internal_ips=[gcp.compute.InstanceGroupManagerStatefulInternalIpArgs(interface_name=NIC, delete_rule="NEVER")],
            stateful_external_ips=[gcp.compute.InstanceGroupManagerStatefulExternalIpArgs(interface_name=NIC, delete_rule="NEVER")]
            if self.address
            else None,
            update_policy=update_policy(),
            opts=pulumi.ResourceOptions(parent=self, depends_on=outer),
        )

        # The one VM, by name, with the state it keeps: the data disk (delete_rule NEVER: detached, never
        # deleted, when the VM goes) and the reserved IPs (auto_delete NEVER). Deleting this config neither
        # deletes the VM nor its state (remove_instance_on_destroy / remove_instance_state_on_destroy false).
        self.instance_config = gcp.compute.PerInstanceConfig(
            f"{name}-vm",
            name=self.vm_name,
            zone=s.zone,
            instance_group_manager=self.group.name,
            minimal_action="REFRESH",
            most_disruptive_allowed_action="REPLACE",
            remove_instance_on_destroy=False,
            remove_instance_state_on_destroy=False,
            preserved_state=gcp.compute.PerInstanceConfigPreservedStateArgs(
                disks=[
                    gcp.compute.PerInstanceConfigPreservedStateDiskArgs(
                        device_name=DATA_DEVICE_NAME, source=self.data_disk.id, mode="READ_WRITE", delete_rule="NEVER"
                    )
                ],
                internal_ips=[
                    gcp.compute.PerInstanceConfigPreservedStateInternalIpArgs(
                        interface_name=NIC,
                        auto_delete="NEVER",
                        ip_address=gcp.compute.PerInstanceConfigPreservedStateInternalIpIpAddressArgs(address=self.internal_address.self_link),
                    )
                ],
                external_ips=[
                    gcp.compute.PerInstanceConfigPreservedStateExternalIpArgs(
                        interface_name=NIC,
                        auto_delete="NEVER",
                        ip_address=gcp.compute.PerInstanceConfigPreservedStateExternalIpIpAddressArgs(address=self.address.self_link),
                    )
                ]
                if self.address
                else None,
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=args.depends_on),
        )

        urls = pulumi.Output.from_input(public_host).apply(lambda ip: origins(s, ip))
        self.convex_url = urls["convex_url"]
        self.convex_site_url = urls["convex_site_url"]
        self.dashboard_url = urls["dashboard_url"]
        self.name = self.instance_config.name
        self.zone = self.group.zone
        self.internal_ip = self.internal_address.address
        # What the front door's backend services take.
        self.instance_group = self.group.instance_group

        self.register_outputs(
            {
                "name": self.name,
                "group": self.group.name,
                "template": self.template.name,
                "external_ip": self.address.address if self.address else None,
                "internal_ip": self.internal_ip,
                "data_disk": self.data_disk.name,
                "convex_url": self.convex_url,
            }
        )
