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
from convex_gcp.settings import config_from_pulumi, stack_target

config = config_from_pulumi()
if stack_target(config) == "local":
    from components.convex_local import ConvexLocal

    local = ConvexLocal("convex-local", from_config(config, local=True))
    # A subset of the outputs contract (docs/outputs.md), plus how to print the admin key.
    for name, value in local.outputs.items():
        pulumi.export(name, value)
else:
    deployment = ConvexOnGcp("convex-gcp", from_config(config))
    # The outputs contract (docs/outputs.md), exported under the names other teams' StackReferences read.
    for name, value in deployment.outputs.items():
        pulumi.export(name, value)
