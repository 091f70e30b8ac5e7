"""The review rules, as plain functions over one resource's inputs.

Nothing here imports pulumi or pulumi_policy: the same functions run inside the policy pack
(`policy/pack.py` adapts `ResourceValidationArgs`) and against the offline plan of every stack
(`resource_from_plan`), so a rule is tested on exactly the shape the engine sends: the resource
type token and its inputs with camelCase keys.

A rule returns a list of violation messages; an empty list means the resource passes.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

SQL_INSTANCE = "gcp:sql/databaseInstance:DatabaseInstance"
FIREWALL = "gcp:compute/firewall:Firewall"
INSTANCE = "gcp:compute/instance:Instance"
INSTANCE_TEMPLATE = "gcp:compute/instanceTemplate:InstanceTemplate"
VM_TYPES = (INSTANCE, INSTANCE_TEMPLATE)

# Addresses that are not "the internet": a set of source ranges opens a port to the world when the
# addresses it leaves out are all in here (0.0.0.0/1 + 128.0.0.0/1 is 0.0.0.0/0; so is every public /8).
NOT_INTERNET_V4 = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
    "224.0.0.0/3",  # multicast, reserved, broadcast
))
# IPv6: the internet is global unicast, 2000::/3.
INTERNET_V6 = ipaddress.ip_network("2000::/3")
PRIMITIVE_ROLES = {"roles/owner", "roles/editor", "roles/viewer"}
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
    # The rule's own pack config (policy/config/<stack>.json), e.g. {"allowedTcpPorts": [3210]}.
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    types: tuple[str, ...]
    check: Callable[[Resource], list[str]]
    remediation: str

    def applies(self, resource_type: str) -> bool:
        """`types` are type tokens or fnmatch patterns (`gcp:*IAMMember`)."""
        return any(fnmatch.fnmatchcase(resource_type, t) for t in self.types)


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


def _uncovered(space: ipaddress._BaseNetwork, ranges: list[ipaddress._BaseNetwork]) -> list[ipaddress._BaseNetwork]:
    """The parts of `space` that no range in `ranges` covers."""
    left = [space]
    for taken in ranges:
        if taken.version != space.version:
            continue
        kept = []
        for net in left:
            if taken.supernet_of(net):
                continue
            kept.extend(net.address_exclude(taken) if net.supernet_of(taken) else [net])
        left = kept
    return left


def world_ranges(props: Mapping[str, Any]) -> list[str]:
    """The source ranges of an ingress rule when together they cover the internet (IPv4 or IPv6), else [].
    A rule with no source ranges, tags or service accounts admits 0.0.0.0/0 (Compute Engine firewall
    docs: an ingress rule's default source is 0.0.0.0/0)."""
    raw = [str(r) for r in _items(props.get("sourceRanges"))]
    if not raw and not _items(props.get("sourceTags")) and not _items(props.get("sourceServiceAccounts")):
        return ["0.0.0.0/0 (no source given)"]
    networks = []
    for value in raw:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            continue  # GCP rejects it; nothing to judge
    v4_left = _uncovered(ipaddress.ip_network("0.0.0.0/0"), networks)
    v6_left = _uncovered(INTERNET_V6, networks)
    open_v4 = all(any(n.subnet_of(private) for private in NOT_INTERNET_V4) for n in v4_left)
    open_v6 = not v6_left
    return sorted(raw) if open_v4 or open_v6 else []


def _ingress(props: Mapping[str, Any]) -> bool:
    return props.get("disabled") is not True and str(props.get("direction") or "INGRESS").upper() == "INGRESS"


def _open_ports(rule: Mapping[str, Any]) -> list[str]:
    """What an `allows` entry opens: ['tcp:22', 'udp:all', 'all', 'tcp:3000-3999']."""
    protocol = str(rule.get("protocol", "")).lower()
    protocol = {"6": "tcp", "17": "udp", "132": "sctp"}.get(protocol, protocol)
    if protocol == "all":
        return ["all"]
    ports = _items(rule.get("ports"))
    if not ports:  # no ports means every port of the protocol
        return [f"{protocol}:all"]
    return [f"{protocol}:{p}" for p in ports]


def _allows_port(rule: Mapping[str, Any], port: int) -> bool:
    # GCP accepts protocol names or IANA numbers: 6 is tcp.
    if str(rule.get("protocol", "")).lower() not in ("tcp", "6", "all"):
        return False
    ports = _items(rule.get("ports"))
    return not ports or any(low <= port <= high for low, high in _port_ranges(ports))


def no_open_ssh(resource: Resource) -> list[str]:
    props = resource.props
    if not _ingress(props):
        return []
    open_ranges = world_ranges(props)
    if open_ranges and any(_allows_port(a, 22) for a in _items(props.get("allows")) if isinstance(a, Mapping)):
        return [f"Firewall '{resource.name}' opens SSH (tcp/22) to {', '.join(open_ranges)}: "
                "allow only the IAP range 35.235.240.0/20 or named admin networks."]
    return []


def no_world_open_ports(resource: Resource) -> list[str]:
    """Every port (not only SSH) open to the internet. The stack's pack config may allow named tcp ports
    (dev: the Convex API 3210/3211, which the program opens only with network.publicHttpWithoutTls)."""
    props = resource.props
    if not _ingress(props):
        return []
    open_ranges = world_ranges(props)
    if not open_ranges:
        return []
    allowed = {int(p) for p in resource.config.get("allowedTcpPorts", [])}
    problems = []
    for rule in _items(props.get("allows")):
        if not isinstance(rule, Mapping):
            continue
        for opened in _open_ports(rule):
            protocol, _, ports = opened.partition(":")
            span = _port_ranges([ports]) if ports and ports != "all" else []
            if protocol == "tcp" and span and all(low == high and low in allowed for low, high in span):
                continue
            problems.append(f"Firewall '{resource.name}' opens {opened} to the internet ({', '.join(open_ranges)}): "
                            "reach admin ports through IAP (35.235.240.0/20) and apps through the HTTPS front door.")
    return problems


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


# NAME=value anywhere in a line (env files, scripts, comments); NAME directly before `=` (not `!=`, `==`).
_ASSIGNMENT = re.compile(r"(?<![\w$!=<>])([A-Za-z_][A-Za-z0-9_]*)=(\"[^\"]*\"|'[^']*'|[^\s;&|)]*)")


def _is_reference(value: str) -> bool:
    """A secret's id, an empty value, or (in a script) something computed at run time: `$(...)`, `"$VAR"`,
    a printf format (`%s`), a case pattern (`*`), a redirect or subshell."""
    value = value.strip().strip("'\"")
    return (value == "" or value.startswith(("projects/", "sm://", "gcp-secret://", "$", "%", "*", "<", "(", "`"))
            or "/secrets/" in value)


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
        # No exemptions: the startup script is metadata too, readable by every instance viewer.
        if not isinstance(value, str):
            continue
        if _SECRET_NAME.search(key) and not _REFERENCE_NAME.search(key) and not _is_reference(value.strip()):
            problems.append(f"VM '{resource.name}' metadata key '{key}' looks like a secret value.")
        for name, literal in _ASSIGNMENT.findall(value):
            if _SECRET_NAME.search(name) and not _REFERENCE_NAME.search(name) and not _is_reference(literal):
                problems.append(f"VM '{resource.name}' metadata '{key}' sets {name} to a literal that looks like a secret.")
        for pattern, what in _SECRET_VALUES:
            if pattern.search(value):
                problems.append(f"VM '{resource.name}' metadata '{key}' contains {what}.")
    return problems


_TRUTHY_OFF = {"false", "0", "no", "off"}


def _metadata(resource: Resource) -> Mapping[str, Any]:
    metadata = resource.props.get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}


def no_serial_port(resource: Resource) -> list[str]:
    value = _metadata(resource).get("serial-port-enable")
    if value is not None and str(value).strip().lower() not in _TRUTHY_OFF:
        return [f"VM '{resource.name}' enables the interactive serial console (serial-port-enable={value}): "
                "remove the key; use OS Login over IAP."]
    return []


def oslogin_enabled(resource: Resource) -> list[str]:
    value = _metadata(resource).get("enable-oslogin")
    if value is None:
        return [f"VM '{resource.name}' does not set enable-oslogin=TRUE: SSH access would fall back to metadata keys."]
    if str(value).strip().lower() in _TRUTHY_OFF:
        return [f"VM '{resource.name}' turns OS Login off (enable-oslogin={value}): set it to TRUE."]
    return []


def no_external_ip_in_prod(resource: Resource) -> list[str]:
    if environment_of(resource) != "prod":
        return []
    problems = []
    for i, interface in enumerate(_items(resource.props.get("networkInterfaces"))):
        if not isinstance(interface, Mapping):
            continue
        for key in ("accessConfigs", "ipv6AccessConfigs"):
            if _items(interface.get(key)):
                problems.append(f"Prod VM '{resource.name}' has an external IP (networkInterfaces[{i}].{key}): "
                                "prod is reached through the HTTPS front door; egress goes through Cloud NAT.")
    return problems


def _roles_in(resource: Resource) -> list[str]:
    props = resource.props
    roles = [str(props["role"])] if props.get("role") else []
    policy = props.get("policyData")
    if isinstance(policy, str):
        try:
            policy = json.loads(policy)
        except ValueError:
            policy = None
    if isinstance(policy, Mapping):
        roles += [str(b.get("role")) for b in _items(policy.get("bindings")) if isinstance(b, Mapping)]
    return roles


def no_primitive_roles(resource: Resource) -> list[str]:
    return [f"IAM grant '{resource.name}' uses the primitive role {role}: grant a predefined or custom role "
            "with only the permissions needed." for role in _roles_in(resource) if role in PRIMITIVE_ROLES]


IAM_TYPES = ("gcp:*:*IAMMember", "gcp:*:*IamMember", "gcp:*:*IAMBinding", "gcp:*:*IamBinding",
             "gcp:*:*IAMPolicy", "gcp:*:*IamPolicy")


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
    Rule("no-secret-literals-in-metadata", "VM metadata (every key, the startup script included) carries no secret-looking literals.",
         VM_TYPES, no_secret_literals_in_metadata, "Store the value in Secret Manager and put only its id in metadata."),
    Rule("no-world-open-ports", "No firewall opens any port to the internet (any set of ranges covering it).",
         (FIREWALL,), no_world_open_ports,
         "Use IAP (35.235.240.0/20) for admin ports and the HTTPS front door for Convex; narrow sourceRanges."),
    Rule("no-serial-port", "VMs do not enable the interactive serial console.", VM_TYPES, no_serial_port,
         "Remove metadata serial-port-enable."),
    Rule("oslogin-enabled", "VMs set enable-oslogin=TRUE.", VM_TYPES, oslogin_enabled,
         "Set metadata enable-oslogin=TRUE."),
    Rule("no-external-ip-in-prod", "Prod VMs have no external IP.", VM_TYPES, no_external_ip_in_prod,
         "Configure convex-gcp:domain (the front door); remove accessConfigs."),
    Rule("no-primitive-roles", "No IAM grant uses roles/owner, roles/editor or roles/viewer.", IAM_TYPES,
         no_primitive_roles, "Grant a predefined or custom role with only the permissions needed."),
]


def check(rule: Rule, resource: Resource) -> list[str]:
    return rule.check(resource) if rule.applies(resource.type) else []


def resource_from_plan(declared: Mapping[str, Any], environment: str = "", config: Mapping[str, Any] | None = None) -> Resource:
    """A resource recorded by `python -m tools.plan <stack> --json`, in the shape the engine sends
    the pack: the recorded inputs are already the camelCase property map."""
    return Resource(
        type=declared["type"],
        name=declared["name"],
        props=declared["inputs"],
        protect=bool(declared.get("protect")),
        environment=environment,
        secret_paths=tuple(declared.get("secret_inputs") or ()),
        config=dict(config or {}),
    )


def evaluate(resources: list[Resource]) -> list[tuple[str, str, str]]:
    """Every violation as (rule name, resource name, message)."""
    return [(rule.name, r.name, message) for r in resources for rule in RULES for message in check(rule, r)]
