"""Another team's program: deploys its Convex functions from CI, so it needs the deployment's URL
and read access to the admin key. Everything it knows about convex-gcp comes from the stack
outputs contract (docs/outputs.md), read through a StackReference."""

import pulumi
import pulumi_gcp as gcp

config = pulumi.Config()
convex_stack = config.get("convexStack") or pulumi.get_stack()
organization = config.get("convexOrganization") or "organization"
deployer_member = config.require("deployerMember")

# On a self-managed backend (GCS bucket, local files) the organization is the literal "organization".
convex = pulumi.StackReference(f"{organization}/convex-gcp/{convex_stack}")

# require_output fails the preview with the missing name if the contract is broken upstream.
convex_url = convex.require_output("convex_url")
admin_key_secret = convex.require_output("admin_key_secret")

# Our CI reads the admin key itself at deploy time; only the grant is managed here, never the value.
gcp.secretmanager.SecretIamMember(
    "convex-admin-key-reader",
    secret_id=admin_key_secret,
    role="roles/secretmanager.secretAccessor",
    member=deployer_member,
)

pulumi.export("convex_url", convex_url)
pulumi.export("convex_site_url", convex.require_output("convex_site_url"))
# Conditional in the contract: absent when the dashboard is off.
pulumi.export("dashboard_url", convex.get_output("dashboard_url"))
# What our CI runs to get CONVEX_SELF_HOSTED_ADMIN_KEY for `npx convex deploy`.
pulumi.export("admin_key_command", admin_key_secret.apply(lambda s: f"gcloud secrets versions access latest --secret={s}"))
