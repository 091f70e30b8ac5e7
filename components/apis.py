"""ProjectApis: the Google APIs this program needs, enabled so `pulumi up` needs no manual step."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_gcp as gcp

REQUIRED_APIS = (
    "cloudresourcemanager.googleapis.com",  # project IAM bindings
    "compute.googleapis.com",
    "iam.googleapis.com",
    "iap.googleapis.com",  # SSH and the dashboard through IAP TCP forwarding
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "secretmanager.googleapis.com",
    "servicenetworking.googleapis.com",
    "sqladmin.googleapis.com",
)


def required_apis(connection_mode: str, managed_dns_zone: bool) -> tuple[str, ...]:
    """The APIs a stack needs: Cloud DNS only for ssl mode's private zone or the front door's records."""
    extra = ("dns.googleapis.com",) if connection_mode == "ssl" or managed_dns_zone else ()
    return REQUIRED_APIS + extra


@dataclass
class ProjectApisArgs:
    project: str
    apis: tuple[str, ...] = field(default=REQUIRED_APIS)


class ProjectApis(pulumi.ComponentResource):
    """Owns one `gcp.projects.Service` per required API. They stay enabled on destroy."""

    def __init__(self, name: str, args: ProjectApisArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("convex-gcp:index:ProjectApis", name, None, opts)
        self.services = [
            gcp.projects.Service(
                api.split(".")[0],
                project=args.project,
                service=api,
                # Other workloads in the project may use the same APIs.
                disable_on_destroy=False,
                disable_dependent_services=False,
                opts=pulumi.ResourceOptions(parent=self),
            )
            for api in args.apis
        ]
        self.register_outputs({"services": [service.service for service in self.services]})
