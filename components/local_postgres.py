"""Postgres for a local stack: a pinned image, a named data volume, the Convex database created
at first start (POSTGRES_DB), healthy only once it accepts TCP connections."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from convex_gcp.local_runtime import DATABASE_USER, POSTGRES_HOST, POSTGRES_PORT

POSTGRES_IMAGE = "postgres:{tag}"
# docker-library/postgres 17/*/Dockerfile: ENV PGDATA /var/lib/postgresql/data, STOPSIGNAL SIGINT.
PGDATA = "/var/lib/postgresql/data"


def healthcheck_command(database: str) -> list[str]:
    """pg_isready over TCP: the entrypoint's init-time server listens on no TCP address
    (docker-entrypoint.sh: -c listen_addresses=''), so this is not ready before init ends."""
    return ["CMD", "pg_isready", "-h", "127.0.0.1", "-p", str(POSTGRES_PORT), "-U", DATABASE_USER, "-d", database]


@dataclass
class LocalPostgresArgs:
    prefix: str
    image_tag: str
    database: str
    password: pulumi.Input[str]
    network: pulumi.Input[str]
    host_port: int
    max_connections: int


class LocalPostgres(pulumi.ComponentResource):
    """The database server of a local stack (one database, named from INSTANCE_NAME)."""

    def __init__(self, name: str, args: LocalPostgresArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("convex-gcp:local:Postgres", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.volume = docker.Volume(f"{name}-data", name=f"{args.prefix}-pgdata", opts=child)
        image = docker.RemoteImage(f"{name}-image", name=POSTGRES_IMAGE.format(tag=args.image_tag), keep_locally=True, opts=child)
        # The backend never runs CREATE DATABASE (FACTS.md): the entrypoint creates POSTGRES_DB owned by
        # POSTGRES_USER on an empty volume, before the server listens on TCP.
        envs = pulumi.Output.secret(
            pulumi.Output.all(args.password).apply(
                lambda v: [f"POSTGRES_USER={DATABASE_USER}", f"POSTGRES_PASSWORD={v[0]}", f"POSTGRES_DB={args.database}"]
            )
        )
        self.container = docker.Container(
            f"{name}-container",
            name=f"{args.prefix}-postgres",
            image=image.image_id,
            envs=envs,
            command=["postgres", "-c", f"max_connections={args.max_connections}"],
            volumes=[docker.ContainerVolumeArgs(volume_name=self.volume.name, container_path=PGDATA)],
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=args.network, aliases=[POSTGRES_HOST])],
            ports=[docker.ContainerPortArgs(internal=POSTGRES_PORT, external=args.host_port, ip="127.0.0.1")],
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=healthcheck_command(args.database), interval="2s", timeout="5s", retries=30, start_period="5s"
            ),
            stop_signal="SIGINT",
            restart="unless-stopped",
            # Created only once healthy, so the backend that depends on it starts against a ready database.
            wait=True,
            wait_timeout=120,
            opts=child,
        )
        self.register_outputs({"container": self.container.name, "volume": self.volume.name})
