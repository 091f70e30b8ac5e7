"""The review rules, as plain functions over one resource's inputs.

Nothing here imports pulumi or pulumi_policy: the same functions run inside the policy pack
(`policy/pack.py` adapts `ResourceValidationArgs`) and against the offline plan of every stack
(`resource_from_plan`), so a rule is tested on exactly the shape the engine sends: the resource
type token and its inputs with camelCase keys.

A rule returns a list of violation messages; an empty list means the resource passes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

SQL_INSTANCE = "gcp:sql/databaseInstance:DatabaseInstance"
FIREWALL = "gcp:compute/firewall:Firewall"
INSTANCE = "gcp:compute/instance:Instance"
INSTANCE_TEMPLATE = "gcp:compute/instanceTemplate:InstanceTemplate"
VM_TYPES = (INSTANCE, INSTANCE_TEMPLATE)

OPEN_RANGES = {"0.0.0.0/0", "::/0"}
DEPRECATED_SQL_SCOPES = {"https://www.googleapis.com/auth/sqlservice", "sql"}
ENFORCED_SSL_MODES = {"ENCRYPTED_ONLY", "TRUSTED_CLIENT_CERTIFICATE_REQUIRED"}
DEFAULT_SA_SUFFIX = "-compute@developer.gserviceaccount.com"


@dataclass
class Resource:
    """What a rule sees: the engine's type token, the inputs (camelCase keys), and the options and
    context the pack can know. `environment` comes from the pack's config for the stack (the
    workflow passes it) or, failing that, the resource's `environment` label."""

    type: str
    name: str
    props: Mapping[str, Any]
    protect: bool = False
    environment: str = ""
    secret_paths: Sequence[str] = field(default_factory=tuple)


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    types: tuple[str, ...]
    check: Callable[[Resource], list[str]]
    remediation: str


def _get(data: Any, dotted: str, default: Any = None) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return default
        data = data[part]
    return default if data is None else data


def _items(value: Any) -> list[Any]:
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return list(value)
    return []


def _labels(props: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in ("settings.userLabels", "labels"):
        labels = _get(props, key)
        if isinstance(labels, Mapping):
            return labels
    return {}


def environment_of(resource: Resource) -> str:
    return (resource.environment or str(_labels(resource.props).get("environment", ""))).lower()


# --------------------------------------------------------------------------- Cloud SQL


def cloudsql_no_public_ip(resource: Resource) -> list[str]:
    # The provider's default for ipv4Enabled is true: an absent value is a public IP.
    if _get(resource.props, "settings.ipConfiguration.ipv4Enabled", True) is not False:
        return [f"Cloud SQL instance '{resource.name}' has a public IPv4 address: set "
                "settings.ipConfiguration.ipv4Enabled=false and connect over private IP."]
    return []


def cloudsql_tls_enforced(resource: Resource) -> list[str]:
    mode = _get(resource.props, "settings.ipConfiguration.sslMode", "")
    if mode not in ENFORCED_SSL_MODES:
        return [f"Cloud SQL instance '{resource.name}' accepts unencrypted connections (sslMode="
                f"{mode or 'unset'}): set settings.ipConfiguration.sslMode to ENCRYPTED_ONLY or "
                "TRUSTED_CLIENT_CERTIFICATE_REQUIRED."]
    return []


def prod_database_protected(resource: Resource) -> list[str]:
    if environment_of(resource) != "prod":
        return []
    props, problems = resource.props, []
    # The provider's deletionProtection defaults to true; GCP's own flag defaults to false.
    if _get(props, "deletionProtection", True) is not True:
        problems.append("deletionProtection=false")
    if _get(props, "settings.deletionProtectionEnabled", False) is not True:
        problems.append("settings.deletionProtectionEnabled is not true")
    if not resource.protect:
        problems.append("the Pulumi `protect` option is off")
    if _get(props, "settings.backupConfiguration.enabled", False) is not True:
        problems.append("automated backups are off")
    if _get(props, "settings.backupConfiguration.pointInTimeRecoveryEnabled", False) is not True:
        problems.append("point-in-time recovery is off")
    if problems:
        return [f"Prod Cloud SQL instance '{resource.name}' is not protected against loss: "
                + "; ".join(problems) + "."]
    return []


# --------------------------------------------------------------------------- firewall


def _port_ranges(ports: list[Any]) -> list[tuple[int, int]]:
    ranges = []
    for port in ports:
        low, _, high = str(port).partition("-")
        if low.strip().isdigit():
            ranges.append((int(low), int(high or low)))
    return ranges


def _allows_ssh(rule: Mapping[str, Any]) -> bool:
    # GCP accepts protocol names or IANA numbers: 6 is tcp.
    if str(rule.get("protocol", "")).lower() not in ("tcp", "6", "all"):
        return False
    ports = _items(rule.get("ports"))
    if not ports:  # no ports means every port of the protocol
        return True
    return any(low <= 22 <= high for low, high in _port_ranges(ports))


def no_open_ssh(resource: Resource) -> list[str]:
    props = resource.props
    if props.get("disabled") is True or str(props.get("direction", "INGRESS")).upper() != "INGRESS":
        return []
    open_ranges = sorted(OPEN_RANGES.intersection(str(r) for r in _items(props.get("sourceRanges"))))
    if open_ranges and any(_allows_ssh(a) for a in _items(props.get("allows")) if isinstance(a, Mapping)):
        return [f"Firewall '{resource.name}' opens SSH (tcp/22) to {', '.join(open_ranges)}: "
                "allow only the IAP range 35.235.240.0/20 or named admin networks."]
    return []


# --------------------------------------------------------------------------- VMs


def _service_accounts(props: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    # Instances take one `serviceAccount` block, templates too; accept a list for safety.
    value = props.get("serviceAccount")
    if isinstance(value, Mapping):
        return [value]
    return [v for v in _items(value) if isinstance(v, Mapping)]


def no_default_compute_sa(resource: Resource) -> list[str]:
    problems = []
    for account in _service_accounts(resource.props):
        email = str(account.get("email") or "")
        # An attached block without an email means the project's default compute account.
        if email in ("", "default") or email.endswith(DEFAULT_SA_SUFFIX):
            problems.append(f"VM '{resource.name}' runs as the default compute service account "
                            f"({email or 'email unset'}): give it a dedicated, least-privilege account.")
    return problems


def no_deprecated_sql_scope(resource: Resource) -> list[str]:
    problems = []
    for account in _service_accounts(resource.props):
        deprecated = sorted(DEPRECATED_SQL_SCOPES.intersection(str(s) for s in _items(account.get("scopes"))))
        if deprecated:
            problems.append(f"VM '{resource.name}' uses the deprecated Cloud SQL scope {', '.join(deprecated)}, "
                            "which does not grant what the Auth Proxy needs: use "
                            "https://www.googleapis.com/auth/sqlservice.admin or cloud-platform.")
    return problems


_IMAGE_LINE = re.compile(r"^\s*([A-Z0-9_]*IMAGE)\s*[=:]\s*\"?([^\s\"]+)", re.MULTILINE)
_YAML_IMAGE = re.compile(r"^\s*-?\s*image:\s*[\"']?([^\s\"']+)", re.MULTILINE)


def _image_problem(ref: str) -> str:
    if "@sha256:" in ref:
        return ""
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last:
        return "has no tag (Docker reads that as :latest)"
    if last.rsplit(":", 1)[1].lower() == "latest":
        return "uses the moving tag :latest"
    return ""


def images_pinned(resource: Resource) -> list[str]:
    metadata = resource.props.get("metadata")
    if not isinstance(metadata, Mapping):
        return []
    problems = []
    for key, value in sorted(metadata.items()):
        if not isinstance(value, str) or key == "startup-script":
            continue
        refs = [m.group(2) for m in _IMAGE_LINE.finditer(value)] + [m.group(1) for m in _YAML_IMAGE.finditer(value)]
        for ref in refs:
            why = _image_problem(ref)
            if why:
                problems.append(f"VM '{resource.name}' metadata '{key}' image {ref} {why}: pin a release tag or digest.")
    return problems


_SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|ADMIN_KEY|API_KEY|PRIVATE_KEY|CREDENTIAL)", re.IGNORECASE)
# A key ending in _ID/_NAME/_REF/_PATH/_FILE names where a secret lives, not the secret itself.
_REFERENCE_NAME = re.compile(r"(_ID|_NAME|_REF|_PATH|_FILE|_VERSION)$", re.IGNORECASE)
_SECRET_VALUES = [
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a PEM private key"),
    (re.compile(r"\"private_key\"\s*:"), "a service-account key"),
    (re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^@\s/]+@"), "a URL with an embedded password"),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"), "a Google API key"),
    (re.compile(r"\bgh[pousr]_[0-9A-Za-z]{36}\b"), "a GitHub token"),
]


def _is_reference(value: str) -> bool:
    return value == "" or value.startswith(("projects/", "sm://", "gcp-secret://")) or "/secrets/" in value


def no_secret_literals_in_metadata(resource: Resource) -> list[str]:
    """Instance metadata is readable by anyone who can view the instance: it may name secrets
    (Secret Manager ids) but never carry them."""
    metadata = resource.props.get("metadata")
    if not isinstance(metadata, Mapping):
        return []
    problems = []
    if "metadata" in resource.secret_paths:
        return [f"VM '{resource.name}' metadata is a Pulumi secret: instance metadata is plaintext to every viewer."]
    for key, value in sorted(metadata.items()):
        if f"metadata.{key}" in resource.secret_paths:
            problems.append(f"VM '{resource.name}' metadata '{key}' carries a Pulumi secret in plaintext metadata.")
            continue
        if not isinstance(value, str) or key == "startup-script":
            continue
        if _SECRET_NAME.search(key) and not _REFERENCE_NAME.search(key) and not _is_reference(value.strip()):
            problems.append(f"VM '{resource.name}' metadata key '{key}' looks like a secret value.")
        for line in value.splitlines():
            name, sep, literal = line.partition("=")
            name = name.strip()
            if sep and _SECRET_NAME.search(name) and not _REFERENCE_NAME.search(name) and not _is_reference(literal.strip()):
                problems.append(f"VM '{resource.name}' metadata '{key}' sets {name} to a literal that looks like a secret.")
        for pattern, what in _SECRET_VALUES:
            if pattern.search(value):
                problems.append(f"VM '{resource.name}' metadata '{key}' contains {what}.")
    return problems


RULES: list[Rule] = [
    Rule("cloudsql-no-public-ip", "Cloud SQL instances have no public IP.", (SQL_INSTANCE,), cloudsql_no_public_ip,
         "Set settings.ipConfiguration.ipv4Enabled=false with a privateNetwork."),
    Rule("cloudsql-tls-enforced", "Cloud SQL instances refuse unencrypted connections.", (SQL_INSTANCE,),
         cloudsql_tls_enforced, "Set settings.ipConfiguration.sslMode to ENCRYPTED_ONLY or TRUSTED_CLIENT_CERTIFICATE_REQUIRED."),
    Rule("prod-database-protected", "Prod Cloud SQL instances have every deletion guard, backups and PITR.",
         (SQL_INSTANCE,), prod_database_protected,
         "Set deletionProtection, settings.deletionProtectionEnabled, protect, backups and point-in-time recovery."),
    Rule("no-open-ssh", "No firewall opens SSH to 0.0.0.0/0.", (FIREWALL,), no_open_ssh,
         "Reach SSH through IAP (35.235.240.0/20) instead."),
    Rule("no-default-compute-sa", "VMs do not run as the default compute service account.", VM_TYPES,
         no_default_compute_sa, "Attach a dedicated service account with only the roles it needs."),
    Rule("no-deprecated-sql-scope", "VMs do not rely on the deprecated sqlservice scope.", VM_TYPES,
         no_deprecated_sql_scope, "Use the sqlservice.admin or cloud-platform scope."),
    Rule("images-pinned", "Container images in VM metadata are pinned (no :latest, no missing tag).", VM_TYPES,
         images_pinned, "Pin a release tag or an @sha256 digest."),
    Rule("no-secret-literals-in-metadata", "VM metadata carries no secret-looking literals.", VM_TYPES,
         no_secret_literals_in_metadata, "Store the value in Secret Manager and put only its id in metadata."),
]


def check(rule: Rule, resource: Resource) -> list[str]:
    return rule.check(resource) if resource.type in rule.types else []


def resource_from_plan(declared: Mapping[str, Any], environment: str = "") -> Resource:
    """A resource recorded by `python -m tools.plan <stack> --json`, in the shape the engine sends
    the pack: the recorded inputs are already the camelCase property map."""
    return Resource(
        type=declared["type"],
        name=declared["name"],
        props=declared["inputs"],
        protect=bool(declared.get("protect")),
        environment=environment,
        secret_paths=tuple(declared.get("secret_inputs") or ()),
    )


def evaluate(resources: list[Resource]) -> list[tuple[str, str, str]]:
    """Every violation as (rule name, resource name, message)."""
    return [(rule.name, r.name, message) for r in resources for rule in RULES for message in check(rule, r)]
