"""Wraps each plain rule (policy/rules.py) as a pulumi-policy ResourceValidationPolicy.

Importing this module starts nothing: only `PolicyPack(...)` in `__main__.py` starts the analyzer
server, so tests can build and call these policies directly.

Secrets: the engine sends Pulumi secrets to the analyzer marked as such (it marshals the inputs with
KeepSecrets), but pulumi-policy (1.21.0, pinned) unwraps them to plaintext before `validate` and
offers no way to ask whether a value was secret (pulumi/pulumi-policy#241). `keep_secret_paths()`,
called by `__main__.py`, records the paths of the marked values while the SDK deserializes them, so
`Resource.secret_paths` is filled in real previews as it is for offline plans."""

from __future__ import annotations

from typing import Any

from pulumi_policy import EnforcementLevel, PolicyConfigSchema, ReportViolation, ResourceValidationArgs, ResourceValidationPolicy
from pulumi_policy import policy as _analyzer
from pulumi_policy.deserialize import SPECIAL_SECRET_SIG, SPECIAL_SIG_KEY, deserialize_properties
from pulumi_policy.proxy import unknown_checking_proxy

from policy import rules

PACK_NAME = "convex-gcp"

# Which environment a stack is. The workflows pass it per stack with a pack config file
# (policy/config/<stack>.json), so the code under review cannot talk its way out of the prod rules
# by changing a label; without it the resource's `environment` label decides.
CONFIG_SCHEMAS = {
    "prod-database-protected": PolicyConfigSchema(properties={"environment": {"type": "string", "enum": ["dev", "prod"]}}),
    "no-external-ip-in-prod": PolicyConfigSchema(properties={"environment": {"type": "string", "enum": ["dev", "prod"]}}),
    # Ports the stack may open to the internet (dev: 3210/3211 with network.publicHttpWithoutTls).
    "no-world-open-ports": PolicyConfigSchema(properties={
        "allowedTcpPorts": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 65535}}}),
}


class SecretMarkedProps(dict):
    """The plaintext inputs pulumi-policy builds, plus where the engine had marked a secret
    (`metadata.<key>`, `a.b[0]`: the same paths the offline plan records)."""

    secret_paths: tuple[str, ...] = ()


def secret_paths(raw: Any, path: str = "") -> list[str]:
    """Paths of the secret-marked values in the wire form of a property map."""
    if isinstance(raw, dict):
        if raw.get(SPECIAL_SIG_KEY) == SPECIAL_SECRET_SIG:
            return [path, *secret_paths(raw.get("value"), path)]
        return [p for k, v in raw.items() for p in secret_paths(v, f"{path}.{k}" if path else k)]
    if isinstance(raw, list):
        return [p for i, v in enumerate(raw) for p in secret_paths(v, f"{path}[{i}]")]
    return []


def _deserialize_keeping_secret_paths(props: dict[str, Any], proxy_secrets: bool = False) -> Any:
    result = deserialize_properties(props, proxy_secrets)
    if proxy_secrets:  # remediation: the SDK keeps secrets itself
        return result
    marked = SecretMarkedProps(result)
    marked.secret_paths = tuple(secret_paths(props))
    return marked


def _proxy_keeping_secret_paths(props: Any) -> Any:
    proxied = unknown_checking_proxy(props)  # copies the map: carry the paths over
    proxied.secret_paths = tuple(getattr(props, "secret_paths", ()))
    return proxied


def keep_secret_paths() -> None:
    """Make the analyzer record secret paths (see the module docstring): it deserializes the request,
    then wraps the result in its unknown-checking proxy; both are swapped for versions that keep
    `secret_paths` on the `props` a policy receives. Idempotent. Fails loudly when a pulumi-policy
    upgrade renamed what it patches, instead of silently losing secret detection."""
    for attribute in ("deserialize_properties", "unknown_checking_proxy"):
        if not hasattr(_analyzer, attribute):
            raise RuntimeError(f"pulumi-policy changed: {_analyzer.__name__}.{attribute} is gone; update policy/pack.py")
    _analyzer.deserialize_properties = _deserialize_keeping_secret_paths
    _analyzer.unknown_checking_proxy = _proxy_keeping_secret_paths


def resource_from_args(args: ResourceValidationArgs) -> rules.Resource:
    config: dict[str, Any] = dict(args.get_config() or {})
    return rules.Resource(
        type=args.resource_type,
        name=args.name,
        props=args.props,
        protect=bool(getattr(args.opts, "protect", False)),
        environment=str(config.get("environment") or ""),
        secret_paths=tuple(getattr(args.props, "secret_paths", ())),
        config=config,
    )


def _validator(rule: rules.Rule):
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        if not rule.applies(args.resource_type):
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
            config_schema=CONFIG_SCHEMAS.get(rule.name),
            remediation_steps=rule.remediation,
        )
        for rule in rules.RULES
    ]
