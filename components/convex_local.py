"""The local counterpart of ConvexOnGcp: the same Convex backend and dashboard with a Postgres, on the
Docker engine of the machine running Pulumi (docs/local.md). Owns the LocalStack (network, Postgres,
backend, dashboard); its outputs are the local subset of the outputs contract plus how to print the admin
key and the secret Postgres URL."""

# No `from __future__ import annotations`: the SDK's schema analyzer reads these annotations as types.
from typing import Any, Optional

import pulumi

from components.local_stack import LocalStack, LocalStackArgs
from convex_gcp.local_runtime import local_postgres_url
from convex_gcp.package_args import ConvexLocalArgs, to_config
from convex_gcp.settings import PROJECT, ConfigError, LocalStackSettings, load_local_settings, resource_prefix


def local_settings_of(args: Any) -> LocalStackSettings:
    """Validate the args as `pulumi up` validates a local stack's config; raise pulumi.RunError."""
    config, stack = to_config(args, ConvexLocalArgs)
    config.setdefault(f"{PROJECT}:target", "local")
    try:
        return load_local_settings(config, stack or pulumi.get_stack())
    except ConfigError as error:
        raise pulumi.RunError(str(error)) from None


class ConvexLocal(pulumi.ComponentResource):
    """A Convex self-hosted backend, its dashboard and a Postgres on the local Docker engine, reachable on
    127.0.0.1 (docs/local.md). Its outputs are the local outputs (docs/outputs.md, "Local stacks")."""

    convex_url: pulumi.Output[str]
    """Convex API and sync URL on 127.0.0.1."""
    convex_site_url: pulumi.Output[str]
    """URL of HTTP actions on 127.0.0.1."""
    dashboard_url: Optional[pulumi.Output[str]]
    """Dashboard URL, when convex.dashboard is true."""
    database_name: pulumi.Output[str]
    """The Convex database in the Postgres container."""
    connection_mode: pulumi.Output[str]
    """Always plaintext: a private Docker network."""
    admin_key_command: pulumi.Output[str]
    """The command that prints the admin key."""
    postgres_url: pulumi.Output[str]
    """The Convex database's URL on 127.0.0.1, with its password: a secret."""

    def __init__(self, name: str, args: ConvexLocalArgs, opts: Optional[pulumi.ResourceOptions] = None):
        settings = local_settings_of(args)  # a bad setting declares nothing
        super().__init__("convex-gcp:index:ConvexLocal", name, None, opts)
        # LocalStack was declared at the stack's root before this component existed: the alias keeps its
        # URN (and its children's), so an existing local stack sees no replacement.
        local = LocalStack("local", LocalStackArgs(settings=settings, prefix=resource_prefix(settings.stack)),
                           opts=pulumi.ResourceOptions(parent=self, aliases=[pulumi.Alias(parent=pulumi.ROOT_STACK_RESOURCE)]))
        outputs: dict[str, Any] = {"convex_url": local.convex_url, "convex_site_url": local.convex_site_url}
        if settings.convex.dashboard:
            outputs["dashboard_url"] = local.dashboard_url
        outputs.update(
            database_name=settings.database_name,
            connection_mode=settings.connection_mode,
            admin_key_command=local.admin_key_command,
            postgres_url=pulumi.Output.secret(local.password.apply(lambda password: local_postgres_url(settings, password))),
        )
        self.outputs = outputs
        for key in type(self).__annotations__:
            setattr(self, key, pulumi.Output.from_input(outputs[key]) if key in outputs else None)
        self.register_outputs(outputs)
