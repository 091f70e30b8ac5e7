"""A whole local stack: a private Docker network, Postgres, the Convex backend and the dashboard."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker
import pulumi_random as random

from components.local_backend import LocalBackend, LocalBackendArgs
from components.local_dashboard import LocalDashboard, LocalDashboardArgs
from components.local_postgres import LocalPostgres, LocalPostgresArgs
from convex_gcp.local_runtime import admin_key_command, backend_env_lines, images, local_dashboard_env, local_urls
from convex_gcp.images import by_digest
from convex_gcp.settings import LocalStackSettings


def pinned(ref: str, parent: pulumi.Resource) -> pulumi.Input[str]:
    """The reference to pull, resolved to its digest as the VM's is (convex_gcp/images.py)."""
    lookup = docker.get_registry_image_output(name=ref, opts=pulumi.InvokeOptions(parent=parent))
    return lookup.sha256_digest.apply(lambda digest: by_digest(ref, digest))


@dataclass
class LocalStackArgs:
    settings: LocalStackSettings
    prefix: str


class LocalStack(pulumi.ComponentResource):
    """Containers only reach each other on the stack's own bridge network; the host reaches them on 127.0.0.1."""

    def __init__(self, name: str, args: LocalStackArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("convex-gcp:local:Stack", name, None, opts)
        s, prefix = args.settings, args.prefix
        child = pulumi.ResourceOptions(parent=self)
        network = docker.Network(f"{name}-network", name=f"{prefix}-net", opts=child)
        # Alphanumerics, as on the VM: inserted into POSTGRES_URL verbatim. Kept (secret) in the stack's state.
        password = random.RandomPassword(f"{name}-db-password", length=32, special=False, opts=child)
        self.postgres = LocalPostgres(
            f"{name}-postgres",
            LocalPostgresArgs(prefix=prefix, image_tag=s.local.postgres_tag, database=s.database_name, password=password.result,
                              network=network.name, host_port=s.local.postgres_port, max_connections=s.local.max_connections),
            opts=child,
        )
        refs = images(s)
        self.backend = LocalBackend(
            f"{name}-backend",
            LocalBackendArgs(prefix=prefix, image=pinned(refs["backend"], self), envs=pulumi.Output.secret(password.result.apply(lambda pw: backend_env_lines(s, pw))),
                             network=network.name, api_port=s.local.api_port, site_port=s.local.site_port, depends_on=[self.postgres.container]),
            opts=child,
        )
        if s.convex.dashboard:
            LocalDashboard(
                f"{name}-dashboard",
                LocalDashboardArgs(prefix=prefix, image=pinned(refs["dashboard"], self), env=local_dashboard_env(s), port=s.local.dashboard_port, depends_on=[self.backend.container]),
                opts=child,
            )
        urls = local_urls(s)
        self.convex_url, self.convex_site_url, self.dashboard_url = urls["convex_url"], urls["convex_site_url"], urls["dashboard_url"]
        self.admin_key_command = admin_key_command(self.backend.container_name)
        self.postgres_port = s.local.postgres_port
        self.password = password.result
        self.register_outputs({"convex_url": self.convex_url, "convex_site_url": self.convex_site_url})
