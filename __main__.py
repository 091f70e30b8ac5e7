"""convex-gcp: a Convex self-hosted backend on a VM, reaching a private-IP Cloud SQL;
or, on a `convex-gcp:target: local` stack, the same backend on Docker (docs/local.md)."""

import pulumi

from convex_gcp import provider_host

if not provider_host.is_program_run():
    # Run as the component package's plugin (PulumiPlugin.yaml): serve ConvexOnGcp, declare nothing.
    provider_host.serve()
    raise SystemExit(0)

from components.convex_on_gcp import ConvexOnGcp
from convex_gcp.package_args import from_config
from convex_gcp.settings import ConfigError, config_from_pulumi, load_local_settings, resource_prefix, stack_target

config = config_from_pulumi()
if stack_target(config) == "local":
    from components.local_stack import LocalStack, LocalStackArgs
    from convex_gcp.local_runtime import local_postgres_url

    try:
        local_settings = load_local_settings(config, pulumi.get_stack())
    except ConfigError as error:
        raise pulumi.RunError(str(error)) from None
    local = LocalStack("local", LocalStackArgs(settings=local_settings, prefix=resource_prefix(local_settings.stack)))
    # A subset of the outputs contract (docs/outputs.md), plus how to print the admin key.
    pulumi.export("convex_url", local.convex_url)
    pulumi.export("convex_site_url", local.convex_site_url)
    if local_settings.convex.dashboard:
        pulumi.export("dashboard_url", local.dashboard_url)
    pulumi.export("database_name", local_settings.database_name)
    pulumi.export("connection_mode", local_settings.connection_mode)
    pulumi.export("admin_key_command", local.admin_key_command)
    pulumi.export("postgres_url", pulumi.Output.secret(local.password.apply(lambda pw: local_postgres_url(local_settings, pw))))
else:
    deployment = ConvexOnGcp("convex-gcp", from_config(config))
    # The outputs contract (docs/outputs.md), exported under the names other teams' StackReferences read.
    for name, value in deployment.outputs.items():
        pulumi.export(name, value)
