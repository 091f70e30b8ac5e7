"""Wraps each plain rule (policy/rules.py) as a pulumi-policy ResourceValidationPolicy.

Importing this module starts nothing: only `PolicyPack(...)` in `__main__.py` starts the analyzer
server, so tests can build and call these policies directly."""

from __future__ import annotations

from typing import Any

from pulumi_policy import EnforcementLevel, PolicyConfigSchema, ReportViolation, ResourceValidationArgs, ResourceValidationPolicy

from policy import rules

PACK_NAME = "convex-gcp"

# Which environment a stack is. The workflows pass it per stack with a pack config file
# (policy/config/<stack>.json), so the code under review cannot talk its way out of the prod rules
# by changing a label; without it the resource's `environment` label decides.
CONFIGURABLE = {"prod-database-protected"}
CONFIG_SCHEMA = PolicyConfigSchema(properties={"environment": {"type": "string", "enum": ["dev", "prod"]}})


def resource_from_args(args: ResourceValidationArgs) -> rules.Resource:
    config: dict[str, Any] = dict(args.get_config() or {})
    return rules.Resource(
        type=args.resource_type,
        name=args.name,
        props=args.props,
        protect=bool(getattr(args.opts, "protect", False)),
        environment=str(config.get("environment") or ""),
    )


def _validator(rule: rules.Rule):
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        if args.resource_type not in rule.types:
            return
        for message in rule.check(resource_from_args(args)):
            report_violation(message, args.urn)

    return validate


def build_policies() -> list[ResourceValidationPolicy]:
    return [
        ResourceValidationPolicy(
            name=rule.name,
            description=rule.description,
            validate=_validator(rule),
            enforcement_level=EnforcementLevel.MANDATORY,
            config_schema=CONFIG_SCHEMA if rule.name in CONFIGURABLE else None,
            remediation_steps=rule.remediation,
        )
        for rule in rules.RULES
    ]
