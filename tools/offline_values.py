"""Real-looking stand-ins for the committed templates' placeholders, for offline plans and tests only.

Pulumi.prod.yaml ships `example.com` hosts, IAP members and alert emails so a new user sees where their
own go; prod refuses them (RFC 2606 names, convex_gcp.settings.check_placeholders). The offline plan of
the template swaps them for this domain, so docs/plans/prod.md and the tests show a deployable prod.
Nothing here is ever sent to Google Cloud."""

from __future__ import annotations

OFFLINE_DOMAIN = "acmecorp.dev"
PLACEHOLDER_DOMAIN = "example.com"
# Config keys whose values may hold the template's placeholders.
KEYS = ("convex-gcp:domain", "convex-gcp:monitoring")


def replace_placeholders(config: dict[str, str]) -> dict[str, str]:
    """The stack file's config with example.com replaced in the host, member and email keys."""
    return {key: value.replace(PLACEHOLDER_DOMAIN, OFFLINE_DOMAIN) if key in KEYS else value for key, value in config.items()}
