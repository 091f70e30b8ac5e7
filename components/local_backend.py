"""The Convex backend for a local stack: the VM's image and environment, its data volume,
healthy once `/version` answers."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from convex_gcp.runtime import API_PORT, SITE_PORT

DATA_DIR = "/convex/data"


@dataclass
class LocalBackendArgs:
    prefix: str
    image: pulumi.Input[str]
    # KEY=VALUE lines; a secret Output because POSTGRES_URL carries the password.
    envs: pulumi.Input[list[str]]
    network: pulumi.Input[str]
    api_port: int
    site_port: int
    depends_on: list[pulumi.Resource]


class LocalBackend(pulumi.ComponentResource):
    """convex-local-backend on Docker. INSTANCE_SECRET is left unset on purpose: the image's
    read_credentials.sh generates it once and keeps it in /convex/data/credentials."""

    def __init__(self, name: str, args: LocalBackendArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("convex-gcp:local:Backend", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.volume = docker.Volume(f"{name}-data", name=f"{args.prefix}-data", opts=child)
        image = docker.RemoteImage(f"{name}-image", name=args.image, keep_locally=True, opts=child)
        self.container_name = f"{args.prefix}-backend"
        self.container = docker.Container(
            f"{name}-container",
            name=self.container_name,
            image=image.image_id,
            envs=args.envs,
            volumes=[docker.ContainerVolumeArgs(volume_name=self.volume.name, container_path=DATA_DIR)],
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=args.network)],
            ports=[
                docker.ContainerPortArgs(internal=API_PORT, external=args.api_port, ip="127.0.0.1"),
                docker.ContainerPortArgs(internal=SITE_PORT, external=args.site_port, ip="127.0.0.1"),
            ],
            # As the official compose file: curl is in the image, /version answers once Postgres is connected.
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=["CMD", "curl", "-f", f"http://localhost:{API_PORT}/version"], interval="5s", timeout="5s", retries=60, start_period="10s"
            ),
            # Convex drains on SIGINT, not SIGTERM (self-hosted/docker/docker-compose.yml: stop_signal SIGINT).
            stop_signal="SIGINT",
            stop_timeout=30,
            restart="unless-stopped",
            wait=True,
            wait_timeout=300,
            opts=pulumi.ResourceOptions(parent=self, depends_on=args.depends_on),
        )
        self.register_outputs({"container": self.container.name, "volume": self.volume.name})
