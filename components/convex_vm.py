"""ConvexVm: the Container-Optimized OS VM, its static IP (none behind the HTTPS front door) and its
persistent data disk; the startup script (vm/startup.sh) runs the Auth Proxy, the Convex backend and the dashboard."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pulumi
import pulumi_docker as docker
import pulumi_gcp as gcp

from convex_gcp import images
from convex_gcp.runtime import DATA_DEVICE_NAME, RuntimeInputs, instance_metadata, origins, vm_dir
from convex_gcp.adoption import import_ids
from convex_gcp.settings import Settings

STARTUP_SCRIPT = vm_dir() / "startup.sh"

# cloud-platform is the only scope Secret Manager accepts; sqlservice.admin is named too so the
# proxy's need is explicit (the seed's bare "sqlservice" scope is deprecated). IAM roles gate access.
VM_SCOPES = [
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/sqlservice.admin",
]


# Image families Google moves forward (COS: docs "Milestones and build numbers"); anything else is one image.
_FAMILY = re.compile(r"cos-(stable|beta|dev|\d+-lts)")


def boot_image_source(image: str) -> tuple[str, str, bool]:
    """`project/name` -> (project, name, is_family). A family is resolved to its newest image at each
    preview, so a new COS release shows up as a planned VM replacement."""
    project, _, name = image.rpartition("/")
    return project or "cos-cloud", name, bool(_FAMILY.fullmatch(name))


def image_tags(s: Settings) -> dict[str, str]:
    """The pinned `repo:tag` of every image the VM runs, by its runtime key."""
    refs = {"BACKEND_IMAGE": images.BACKEND_IMAGE.format(tag=s.convex.version)}
    if s.convex.dashboard:
        refs["DASHBOARD_IMAGE"] = images.DASHBOARD_IMAGE.format(tag=s.convex.version)
    if s.connection_mode == "proxy":
        refs["PROXY_IMAGE"] = images.PROXY_IMAGE.format(tag=s.convex.proxy_version)
    return refs


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
    """Owns the static IP, the data disk and the VM with its rendered runtime metadata."""

    def __init__(self, name: str, args: ConvexVmArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("convex-gcp:index:ConvexVm", name, None, opts)
        s = args.settings
        protect = s.is_prod
        labels = s.labels

        # Behind the front door the VM has no external IP: clients come through the load balancer and
        # image pulls go out through Cloud NAT.
        self.address = None
        if s.domain is None:
            self.address = gcp.compute.Address(
                f"{name}-ip",
                name=f"{args.prefix}-ip",
                region=s.region,
                address_type="EXTERNAL",
                network_tier="PREMIUM",
                opts=pulumi.ResourceOptions(parent=self, protect=protect, depends_on=opts.depends_on if opts else None),
            )
        public_host: pulumi.Input[str] = self.address.address if self.address else ""
        # /convex/data holds files, modules and search snapshots that must match the database.
        self.data_disk = gcp.compute.Disk(
            f"{name}-data",
            name=f"{args.prefix}-data",
            zone=s.zone,
            type=s.vm.data_disk_type,
            size=s.vm.data_disk_size_gb,
            labels=labels,
            opts=pulumi.ResourceOptions(parent=self, protect=protect, depends_on=opts.depends_on if opts else None),
        )

        # Each pinned tag resolved to its digest at preview: a tag that does not exist fails the preview
        # (not the boot), and a tag moved later cannot change what runs. The registry lookup is HTTP only
        # (kreuzwerker/terraform-provider-docker data_source_docker_registry_image.go: HEAD on the manifest,
        # anonymous bearer token on a 401, as ghcr.io and gcr.io serve public images), so no Docker daemon
        # (disable_docker_daemon_check, provider PR #703) and no credentials are needed.
        registry = docker.Provider(f"{name}-registry", disable_docker_daemon_check=True, opts=pulumi.ResourceOptions(parent=self))
        pinned = pulumi.Output.all(
            **{
                key: docker.get_registry_image_output(name=ref, opts=pulumi.InvokeOptions(provider=registry, parent=self)).sha256_digest.apply(
                    lambda digest, ref=ref: images.by_digest(ref, digest)
                )
                for key, ref in image_tags(s).items()
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

        image_project, image_name, follows = boot_image_source(s.vm.image)
        if follows:
            # Resolved at every preview/up: a newer COS in the family is a planned replacement of the VM
            # (initialize_params.image forces a new instance). In-place COS updates are no alternative here:
            # they are off by default since milestone 117 and unsupported with Secure Boot (COS docs, "Automatic updates").
            boot_image: pulumi.Input[str] = gcp.compute.get_image_output(
                family=image_name, project=image_project, opts=pulumi.InvokeOptions(parent=self)
            ).self_link
        else:
            boot_image = f"projects/{image_project}/global/images/{image_name}"

        self.instance = gcp.compute.Instance(
            f"{name}-vm",
            name=s.adopt.vm or f"{args.prefix}-vm",
            zone=s.zone,
            machine_type=s.vm.machine_type,
            tags=[args.network_tag],
            labels=labels,
            boot_disk=gcp.compute.InstanceBootDiskArgs(
                auto_delete=True,
                initialize_params=gcp.compute.InstanceBootDiskInitializeParamsArgs(
                    image=boot_image, size=s.vm.boot_disk_size_gb, type="pd-balanced", labels=labels
                ),
            ),
            # An attached (non-boot) disk is sent without autoDelete (terraform-provider-google
            # expandAttachedDisk sets only source, mode, deviceName), and Compute Engine's default is false:
            # deleting the VM detaches the data disk and keeps it. The boot disk alone is auto-deleted.
            attached_disks=[
                gcp.compute.InstanceAttachedDiskArgs(source=self.data_disk.id, device_name=DATA_DEVICE_NAME, mode="READ_WRITE")
            ],
            network_interfaces=[
                gcp.compute.InstanceNetworkInterfaceArgs(
                    subnetwork=args.subnetwork,
                    access_configs=[gcp.compute.InstanceNetworkInterfaceAccessConfigArgs(nat_ip=self.address.address, network_tier="PREMIUM")]
                    if self.address
                    else [],
                )
            ],
            service_account=gcp.compute.InstanceServiceAccountArgs(email=args.service_account_email, scopes=VM_SCOPES),
            shielded_instance_config=gcp.compute.InstanceShieldedInstanceConfigArgs(
                enable_secure_boot=True, enable_vtpm=True, enable_integrity_monitoring=True
            ),
            # The "startup-script" key updates in place; the VM's watcher re-applies changes.
            metadata=metadata,
            allow_stopping_for_update=True,
            deletion_protection=s.vm_deletion_protection,
            scheduling=gcp.compute.InstanceSchedulingArgs(automatic_restart=True, on_host_maintenance="MIGRATE"),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=args.depends_on,
                import_=import_ids(s)["vm"],
                # The name is fixed, so a create-first replacement gets 409 alreadyExists while the old VM
                # still holds the data disk read-write. The engine honours an explicit option over the
                # provider's choice (pulumi/pulumi pkg/resource/deploy/step_generator.go) and deletes
                # first the dependents a replacement would replace (the front door's group membership).
                delete_before_replace=True,
                # With Compute Engine deletion protection on, any replacement fails at the delete: hold the
                # boot image instead (docs/runbooks.md, "Replace the VM"). An adopted VM keeps the image it was
                # built from, so its import matches (docs/adoption.md).
                ignore_changes=["bootDisk.initializeParams.image"] if s.vm_deletion_protection or s.adopt.vm else None,
            ),
        )

        urls = pulumi.Output.from_input(public_host).apply(lambda ip: origins(s, ip))
        self.convex_url = urls["convex_url"]
        self.convex_site_url = urls["convex_site_url"]
        self.dashboard_url = urls["dashboard_url"]
        self.internal_ip = self.instance.network_interfaces[0].network_ip
        # What the front door's unmanaged instance group needs.
        self.self_link = self.instance.self_link
        self.zone = self.instance.zone

        self.register_outputs(
            {
                "name": self.instance.name,
                "external_ip": self.address.address if self.address else None,
                "internal_ip": self.internal_ip,
                "data_disk": self.data_disk.name,
                "convex_url": self.convex_url,
            }
        )
