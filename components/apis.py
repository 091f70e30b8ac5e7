"""ProjectApis: the Google APIs this program needs, enabled so `pulumi up` needs no manual step."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi.dynamic as dynamic
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
    """The APIs a stack needs: Cloud DNS only for ssl mode's private zone or the front door's records;
    Certificate Manager for the front door's DNS-authorized certificates (with a managed zone)."""
    extra = ("dns.googleapis.com",) if connection_mode == "ssl" or managed_dns_zone else ()
    extra += ("certificatemanager.googleapis.com",) if managed_dns_zone else ()
    return REQUIRED_APIS + extra


# A newly enabled API answers 403 accessNotConfigured/SERVICE_DISABLED for a while after
# services.enable returns (terraform-provider-google #8214, #11023: "wait a few minutes"; the usual fix
# there is a time_sleep after google_project_service). pulumi-time is not a dependency here, so the
# equivalent is a dynamic resource that sleeps when it is created, i.e. when an API set is first enabled.
PROPAGATION_SECONDS = 90


# The provider is pickled into the state (dill) and unpickled by the dynamic-provider process, which cannot
# import this project's modules (a class from `components.apis` is pickled by reference and fails there
# with "No module named 'components'", cf. pulumi/pulumi#7453). Defined outside any module, it is pickled
# by value and needs only `time` and `pulumi.dynamic`.
_PROVIDER_SOURCE = """
import time
from pulumi import dynamic


class PropagationWait(dynamic.ResourceProvider):
    \"\"\"time_sleep's create_duration: sleep on create only; a changed API list replaces it (sleeps again).\"\"\"

    def create(self, props):
        time.sleep(int(props["seconds"]))
        return dynamic.CreateResult(id_="apis-" + str(len(props["services"])), outs=props)

    def diff(self, _id, olds, news):
        changed = sorted(olds.get("services") or []) != sorted(news.get("services") or [])
        return dynamic.DiffResult(changes=changed, replaces=["services"] if changed else [], delete_before_replace=False)
"""
_namespace: dict = {"__name__": "__main__"}
exec(compile(_PROVIDER_SOURCE, "<convex-gcp api propagation wait>", "exec"), _namespace)  # noqa: S102
_PropagationWait = _namespace["PropagationWait"]


class ApiPropagationWait(dynamic.Resource):
    def __init__(self, name: str, services: pulumi.Input[list[str]], seconds: int, opts: pulumi.ResourceOptions):
        super().__init__(_PropagationWait(), name, {"services": services, "seconds": seconds}, opts)


@dataclass
class ProjectApisArgs:
    project: str
    apis: tuple[str, ...] = field(default=REQUIRED_APIS)
    propagation_seconds: int = PROPAGATION_SECONDS


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
        self.enabled = list(self.services)
        # Everything else depends on this, not on the Service resources: it exists once every API is
        # enabled and has had time to propagate.
        self.ready = ApiPropagationWait(
            "apis-propagated",
            sorted(args.apis),
            args.propagation_seconds,
            opts=pulumi.ResourceOptions(parent=self, depends_on=self.enabled),
        )
        self.services = [self.ready]
        self.register_outputs({"services": [service.service for service in self.enabled]})
