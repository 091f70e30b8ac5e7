"""The Convex dashboard for a local stack, started once the backend is healthy."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from convex_gcp.runtime import DASHBOARD_PORT, render_env


@dataclass
class LocalDashboardArgs:
    prefix: str
    image: pulumi.Input[str]
    env: dict[str, str]
    port: int
    depends_on: list[pulumi.Resource]


class LocalDashboard(pulumi.ComponentResource):
    """convex-dashboard on Docker, published on 127.0.0.1 only."""

    def __init__(self, name: str, args: LocalDashboardArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("convex-gcp:local:Dashboard", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        image = docker.RemoteImage(f"{name}-image", name=args.image, keep_locally=True, opts=child)
        self.container = docker.Container(
            f"{name}-container",
            name=f"{args.prefix}-dashboard",
            image=image.image_id,
            envs=render_env(args.env).splitlines(),
            ports=[docker.ContainerPortArgs(internal=DASHBOARD_PORT, external=args.port, ip="127.0.0.1")],
            stop_signal="SIGINT",
            restart="unless-stopped",
            opts=pulumi.ResourceOptions(parent=self, depends_on=args.depends_on),
        )
        self.register_outputs({"container": self.container.name})
