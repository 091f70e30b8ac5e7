"""Offline plan: run __main__.py for a stack under the Pulumi SDK's mocks and show what it
declares. Tests and reviewers use the same code.

    python -m tools.plan dev                 # Markdown summary
    python -m tools.plan prod --json         # everything recorded, as JSON
    python -m tools.plan dev --set convex-gcp:connectionMode=ssl
    python -m tools.plan dev --set database.tier=db-custom-2-7680   # like pulumi config set --path

--set KEY=VALUE overrides one key for this run; the namespace defaults to convex-gcp. A key with
'.' or '[' sets one field inside an object, as `pulumi config set --path` does (true/false become
booleans, digits integers); a plain object key (--set 'convex-gcp:vm={...}') replaces the object.
Exit status: 0 planned, 1 configuration error (in every output mode), 2 usage error.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import runpy
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "convex-gcp"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
SIG_KEY = "4dabf18193072939515e22adb298388d"


@dataclass
class Declared:
    type: str
    name: str
    urn: str
    parent: str
    inputs: dict[str, Any]
    secret_inputs: list[str] = field(default_factory=list)
    dependencies: list[str] = field(default_factory=list)
    protect: bool = False
    ignore_changes: list[str] = field(default_factory=list)
    custom: bool = True
    import_id: str = ""
    # The deleteBeforeReplace option as the engine receives it; None when not set (the provider decides).
    delete_before_replace: Optional[bool] = None
    # Alias specs as the engine receives them: {"noParent": True} means "this was once at the stack's root".
    aliases: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Plan:
    stack: str
    resources: list[Declared]
    outputs: dict[str, dict[str, Any]]
    warnings: list[str]
    error: str = ""
    # Config keys whose template placeholders (example.com) the plan replaced (tools/offline_values.py).
    placeholders: list[str] = field(default_factory=list)
    # Provider functions the program called ({"token", "args"}): a preview would make these lookups.
    invokes: list[dict[str, Any]] = field(default_factory=list)

    def of_type(self, typ: str) -> list[Declared]:
        return [r for r in self.resources if r.type == typ]

    def one(self, typ: str) -> Declared:
        found = self.of_type(typ)
        if len(found) != 1:
            raise AssertionError(f"expected one {typ}, found {len(found)}")
        return found[0]

    def by_name(self, name: str) -> Declared:
        return next(r for r in self.resources if r.name == name)


def _alias(alias) -> dict[str, Any]:
    # resource.proto Alias: either a full URN or a spec whose fields say what differed (here: the parent).
    if alias.urn:
        return {"urn": alias.urn}
    spec = alias.spec
    return {k: v for k, v in {"name": spec.name, "type": spec.type, "parentUrn": spec.parentUrn, "noParent": spec.noParent}.items() if v}


class UsageError(Exception):
    """A bad command line or stack name: reported in one line, exit status 2."""


def stacks() -> list[str]:
    return sorted(p.name[len("Pulumi."):-len(".yaml")] for p in ROOT.glob("Pulumi.*.yaml"))


@functools.lru_cache(maxsize=16)
def _stack_document(path: Path, mtime_ns: int, size: int) -> dict:
    """A stack file, parsed once per version of it (the tests ask for a stack's config hundreds of
    times); callers only read it."""
    import yaml

    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise UsageError(f"{path.name} is not valid YAML: {error}") from None


def stack_config(stack: str, overrides: dict[str, str] | None = None, placeholders: bool = True) -> dict[str, str]:
    """The flat config map the engine would pass: `ns:key` → string (objects as JSON).
    Override keys with '.' or '[' are --path sets (apply_set). placeholders=False keeps the
    template's example.com values as they are (what `pulumi up` would get)."""
    path = ROOT / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        raise UsageError(f"no stack {stack!r} (no {path.name}); stacks: {', '.join(stacks())}")
    stat = path.stat()
    document = _stack_document(path, stat.st_mtime_ns, stat.st_size)
    config: dict[str, str] = {}
    for key, value in (document.get("config") or {}).items():
        if ":" not in key:
            key = f"{PROJECT}:{key}"
        if isinstance(value, dict) and set(value) == {"secure"}:
            value = "<secret>"
        if isinstance(value, (dict, list)):
            config[key] = json.dumps(value)
        elif isinstance(value, bool):
            config[key] = "true" if value else "false"
        else:
            config[key] = str(value)
    from tools.offline_values import replace_placeholders  # the template's example.com, see there

    if placeholders:
        config = replace_placeholders(config)
    for key, value in (overrides or {}).items():
        apply_set(config, key, value)
    return config


_SEGMENT = re.compile(r'\.?([^.\[\]"]+)|\[(\d+)\]|\["((?:[^"\\]|\\.)*)"\]')


def parse_path(name: str) -> list[str | int]:
    """A Pulumi property path (`database.flags["cloudsql.iam_authentication"]`, `a.b[0]`) → segments."""
    segments: list[str | int] = []
    position = 0
    while position < len(name):
        match = _SEGMENT.match(name, position)
        if not match or (position == 0 and name.startswith(".")):
            raise UsageError(f"cannot read the key path {name!r} at {name[position:]!r}")
        key, index, quoted = match.groups()
        segments.append(key if key is not None else int(index) if index is not None else quoted)
        position = match.end()
    if not segments or not isinstance(segments[0], str):
        raise UsageError(f"the key path {name!r} must start with a name")
    return segments


def _path_value(value: str) -> Any:
    """What `pulumi config set --path` stores (pulumi sdk/go/common/resource/config, adjustObjectValue)."""
    if value in ("true", "false"):
        return value == "true"
    if len(value) > 1 and value.startswith("0"):
        return value
    return int(value) if re.fullmatch(r"[-+]?\d+", value) else value


def apply_set(config: dict[str, str], key: str, value: str) -> None:
    """`--set KEY=VALUE` into the flat config map: a plain key replaces, a path sets one field."""
    prefix = re.match(r"([A-Za-z0-9_-]+):", key)  # a namespace, not a colon inside a quoted path segment
    namespace, name = (prefix.group(1), key[prefix.end():]) if prefix else (PROJECT, key)
    if not name:
        raise UsageError(f"--set {key}=…: the key is empty")
    if "." not in name and "[" not in name:
        config[f"{namespace}:{name}"] = value
        return
    segments = parse_path(name)
    flat = f"{namespace}:{segments[0]}"
    try:
        root = json.loads(config[flat]) if flat in config else None
    except ValueError:
        root = config[flat]
    container_kind = dict if isinstance(segments[1], str) else list
    if root is None:
        root = container_kind()
    node: Any = root
    for depth, (segment, following) in enumerate(zip(segments[1:], segments[2:] + [None]), start=1):
        shown = key.split(":", 1)[-1] if ":" in key else key
        last = following is None
        child = _path_value(value) if last else ({} if isinstance(following, str) else [])
        if isinstance(segment, str):
            if not isinstance(node, dict):
                raise UsageError(f"--set {shown}: {'.'.join(map(str, segments[:depth]))} is not an object")
            node[segment] = child if last or segment not in node else node[segment]
            node = node[segment]
        else:
            if not isinstance(node, list):
                raise UsageError(f"--set {shown}: {'.'.join(map(str, segments[:depth]))} is not a list")
            # Pulumi allows an index up to the list's length (append), not beyond.
            if segment > len(node):
                raise UsageError(f"--set {shown}: index {segment} is beyond the end of a list of {len(node)}")
            if segment == len(node):
                node.append(child)
            elif last:
                node[segment] = child
            node = node[segment]
    config[flat] = json.dumps(root)


def _unwrap(value: Any, path: str, secrets: list[str]) -> Any:
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            secrets.append(path)
            return _unwrap(value.get("value"), path, secrets)
        return {k: _unwrap(v, f"{path}.{k}" if path else k, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v, f"{path}[{i}]", secrets) for i, v in enumerate(value)]
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        # The mock monitor's protobuf Struct carries every number as a double: 16 arrives as 16.0.
        return int(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def run_program(stack: str, overrides: dict[str, str] | None = None) -> Plan:
    """Run __main__.py once in this process (the SDK's mock state is process-global)."""
    import pulumi
    from pulumi.runtime import mocks as pulumi_mocks
    from pulumi.runtime import rpc
    from pulumi.runtime.settings import get_root_resource
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    from tools.mocks import GcpMocks

    config = stack_config(stack, overrides)
    as_written = stack_config(stack, overrides, placeholders=False)
    replaced = sorted(key for key in config if config[key] != as_written.get(key))
    resources: list[Declared] = []
    warnings: list[str] = []

    class Recorder(pulumi_mocks.MockMonitor):
        def RegisterResource(self, request):  # noqa: N802 (gRPC name)
            response = super().RegisterResource(request)
            if request.type != "pulumi:pulumi:Stack":
                secrets: list[str] = []
                inputs = _unwrap(rpc.deserialize_properties(request.object, keep_unknowns=True), "", secrets)
                resources.append(
                    Declared(
                        type=request.type,
                        name=request.name,
                        urn=response.urn,
                        parent=request.parent,
                        inputs=_jsonable(inputs),
                        secret_inputs=secrets,
                        dependencies=sorted(request.dependencies),  # the SDK's order varies run to run
                        protect=bool(request.protect),
                        ignore_changes=list(request.ignoreChanges),
                        import_id=request.importId,
                        custom=bool(request.custom),
                        delete_before_replace=request.deleteBeforeReplace if request.deleteBeforeReplaceDefined else None,
                        aliases=[_alias(a) for a in request.aliases],
                    )
                )
            return response

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                warnings.append(record.getMessage())

    logger = logging.getLogger(f"convex-gcp-plan-{stack}")
    logger.addHandler(Capture())
    logger.propagate = False
    mocks = GcpMocks(config.get("gcp:project", "project"), config.get("gcp:region", "region"))
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, logger=logger, monitor=Recorder(mocks))
    pulumi.runtime.set_all_config(config)

    error = ""
    cwd = os.getcwd()
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    try:
        _sync_await(run_pulumi_func(lambda: runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")))
    except pulumi.RunError as run_error:
        error = str(run_error)
    except Exception as invoke_error:
        # A failed provider call (e.g. a pinned image tag the registry doesn't have) is what a real
        # preview reports as an error; anything else is a bug in the program and keeps its traceback.
        if not str(invoke_error).startswith("invoke of "):
            raise
        error = f"preview would fail: {invoke_error}"
    finally:
        os.chdir(cwd)

    outputs: dict[str, dict[str, Any]] = {}
    if not error:
        for key, value in get_root_resource().outputs.items():
            output = pulumi.Output.from_input(value)
            outputs[key] = {
                "value": _jsonable(_sync_await(output.future())),
                "secret": bool(_sync_await(output.is_secret())),
            }
    # Registration order varies with the SDK's task scheduling; URNs are unique and stable. So does the order
    # of invokes issued from concurrent applies (the image lookups): sorted by content, so runs compare equal.
    invokes = sorted(mocks.invokes, key=lambda i: json.dumps(i, sort_keys=True))
    return Plan(stack, sorted(resources, key=lambda r: r.urn), outputs, warnings, error, replaced, invokes)


def plan_from_json(text: str) -> Plan:
    data = json.loads(text)
    return Plan(data["stack"], [Declared(**r) for r in data["resources"]], data["outputs"], data["warnings"], data["error"],
                data.get("placeholders", []), data.get("invokes", []))


def placeholder_notice(plan: Plan) -> str:
    """Said loudly: the plan is of stand-in values, not the user's, and `pulumi up` would refuse the stack."""
    if not plan.placeholders:
        return ""
    from tools.offline_values import OFFLINE_DOMAIN, PLACEHOLDER_DOMAIN

    return (f"PLACEHOLDERS PLANNED, NOT YOUR VALUES: {', '.join(plan.placeholders)} in Pulumi.{plan.stack}.yaml hold the "
            f"template's {PLACEHOLDER_DOMAIN}; this plan used {OFFLINE_DOMAIN} in their place, and `pulumi up` refuses "
            f"{PLACEHOLDER_DOMAIN}. Set your own hosts, members and emails (pulumi config set --path ..., README "
            "\"Configuration reference\").")


# --------------------------------------------------------------------------- rendering

_KEY_SETTINGS = {
    "gcp:sql/databaseInstance:DatabaseInstance": ["databaseVersion", "settings.tier", "settings.edition", "settings.availabilityType",
        "settings.ipConfiguration.ipv4Enabled", "settings.ipConfiguration.sslMode", "settings.ipConfiguration.serverCaMode", "settings.connectorEnforcement",
        "settings.backupConfiguration.pointInTimeRecoveryEnabled", "settings.databaseFlags", "deletionProtection",
        "settings.deletionProtectionEnabled"],
    "gcp:compute/instance:Instance": ["machineType", "zone", "bootDisk.initializeParams.image", "serviceAccount.scopes",
        "shieldedInstanceConfig", "deletionProtection"],
    "gcp:compute/instanceTemplate:InstanceTemplate": ["namePrefix", "machineType", "disks", "serviceAccount.scopes", "shieldedInstanceConfig"],
    "gcp:compute/instanceGroupManager:InstanceGroupManager": ["name", "zone", "autoHealingPolicies", "statefulDisks", "statefulInternalIps",
        "updatePolicy"],
    "gcp:compute/perInstanceConfig:PerInstanceConfig": ["name", "preservedState", "minimalAction", "mostDisruptiveAllowedAction"],
    "gcp:compute/healthCheck:HealthCheck": ["httpHealthCheck", "checkIntervalSec", "unhealthyThreshold"],
    "gcp:compute/disk:Disk": ["name", "type", "size"],
    "gcp:compute/firewall:Firewall": ["allows", "sourceRanges"],
    "gcp:servicenetworking/connection:Connection": ["deletionPolicy"],
    "gcp:compute/globalAddress:GlobalAddress": ["purpose", "prefixLength"],
    "gcp:sql/user:User": ["name", "type", "databaseRoles"],
    "gcp:projects/iAMMember:IAMMember": ["role"],
    "gcp:secretmanager/secretIamMember:SecretIamMember": ["role"],
    "gcp:storage/bucket:Bucket": ["location", "uniformBucketLevelAccess", "publicAccessPrevention", "retentionPolicy",
        "softDeletePolicy", "versioning", "lifecycleRules", "forceDestroy"],
    "gcp:projects/iAMCustomRole:IAMCustomRole": ["permissions"],
    "gcp:storage/bucketIAMMember:BucketIAMMember": ["role", "member"],
    "gcp:monitoring/metricDescriptor:MetricDescriptor": ["type", "metricKind"],
    "docker:index/remoteImage:RemoteImage": ["name"],
    "docker:index/container:Container": ["name", "ports", "volumes", "healthcheck.tests", "stopSignal", "wait"],
}
# Environment values that carry a password: shown as [secret] in renderings.
_SECRET_ENV = ("POSTGRES_URL=", "POSTGRES_PASSWORD=")


def _get(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


IMAGE_LOOKUPS = ("gcp:compute/getImage:getImage", "docker:index/getRegistryImage:getRegistryImage")


def render_pins(plan: Plan) -> list[str]:
    """The pinned boot image and container digests, and every lookup the preview would make (a GCP stack
    makes no image-family or registry lookup once convex_gcp/pins.json has each tag's digest)."""
    templates = plan.of_type("gcp:compute/instanceTemplate:InstanceTemplate")
    if not templates:
        return []
    metadata = templates[0].inputs.get("metadata") or {}
    config = dict(line.split("=", 1) for line in (metadata.get("convex-gcp-config") or "").splitlines() if "=" in line)
    lines = ["", "## Pins and lookups at preview", "", f"- boot image: `{templates[0].inputs['disks'][0].get('sourceImage')}`"]
    lines += [f"- `{key}`: `{config[key]}`" for key in ("BACKEND_IMAGE", "DASHBOARD_IMAGE", "PROXY_IMAGE", "COLLECTOR_IMAGE") if key in config]
    lookups = sorted({f"{i['token']}({i['args'].get('name') or i['args'].get('family') or ''})" for i in plan.invokes
                      if i["token"] in IMAGE_LOOKUPS})
    lines.append("- image-family and registry lookups: " + (", ".join(f"`{x}`" for x in lookups) if lookups else "none"))
    return lines


def render_markdown(plan: Plan) -> str:
    if plan.error:
        return f"# Stack `{plan.stack}`: configuration error\n\n```\n{plan.error}\n```\n"
    lines = [f"# Stack `{plan.stack}`", ""]
    if plan.placeholders:
        lines += [f"> **{placeholder_notice(plan)}**", ""]
    cost = None
    if any(r.inputs.get("region") for r in plan.resources if r.type == "gcp:sql/databaseInstance:DatabaseInstance"):
        from tools.cost import estimate as cost_estimate

        cost = cost_estimate(plan)  # GCP stacks; a local (Docker) stack costs no cloud money
    lines += [f"{sum(r.custom for r in plan.resources)} resources."]
    if cost is not None:
        lines += ["", f"**Estimated monthly cost: ${cost.total:,.2f}** at {cost.region} list prices (line by line at the end)."]
    lines += ["", "## Resources", ""]
    lines += ["| type | name | protected | key settings |", "|---|---|---|---|"]
    for r in sorted(plan.resources, key=lambda r: (r.type, r.name)):
        if not r.custom:
            continue
        settings = []
        for key in _KEY_SETTINGS.get(r.type, []):
            value = _get(r.inputs, key)
            if value is not None:
                shown = "[secret]" if key in r.secret_inputs else json.dumps(value, sort_keys=True)
                settings.append(f"`{key}`={shown}")
        lines.append(f"| {r.type.split(':')[-1]} | {r.name} | {'yes' if r.protect else ''} | {'<br>'.join(settings).replace('|', '¦')} |")
    vm = [r for r in plan.resources if r.type in ("gcp:compute/instanceTemplate:InstanceTemplate", "gcp:compute/instance:Instance")]
    if vm:
        lines += ["", "## VM runtime settings (instance metadata)", ""]
        for key, value in sorted((vm[0].inputs.get("metadata") or {}).items()):
            if key in ("startup-script", "convex-gcp-isolate"):
                source = {"startup-script": "vm/startup.sh", "convex-gcp-isolate": "vm/isolate.sh"}[key]
                lines.append(f"- `{key}`: {source} ({len(value.splitlines())} lines)")
            elif key == "user-data":
                lines.append(f"- `user-data`: cloud-init installing the health endpoint, vm/health/ ({len(value.splitlines())} lines)")
            elif key.startswith("convex-gcp-script-"):  # the units' scripts, verbatim from vm/
                lines.append(f"- `{key}`: vm/{key[len('convex-gcp-script-'):]}.sh ({len(value.splitlines())} lines)")
            elif "\n" in value:
                lines += [f"- `{key}`:", "", "```", value.rstrip("\n"), "```", ""]
            else:
                lines.append(f"- `{key}`: `{value}`")
    containers = sorted((r for r in plan.resources if r.type == "docker:index/container:Container"), key=lambda r: r.name)
    if containers:
        lines += ["", "## Container environments", ""]
        for r in containers:
            envs = [e.split("=", 1)[0] + "=[secret]" if e.startswith(_SECRET_ENV) else e for e in r.inputs.get("envs") or []]
            lines += [f"- `{r.inputs.get('name')}`:", "", "```", *sorted(envs), "```", ""]
    lines += render_monitoring(plan)
    lines += render_pins(plan)
    lines += ["", "## Outputs", "", "| name | value |", "|---|---|"]
    for key, out in sorted(plan.outputs.items()):
        lines.append(f"| {key} | {'[secret]' if out['secret'] else '`' + str(out['value']) + '`'} |")
    from tools.critical_path import VM, estimate, render

    if plan.of_type(VM):  # the estimate models the GCP stacks; a local (Docker) stack has no VM
        lines += [""] + render(estimate(plan))
    if cost is not None:
        from tools.cost import render as render_cost

        lines += [""] + render_cost(cost)
    if plan.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in plan.warnings]
    return "\n".join(lines) + "\n"


def render_monitoring(plan: Plan) -> list[str]:
    """Alert policies (what fires, on which filter) and the dashboard's layout, as a reviewer reads them."""
    policies = sorted(plan.of_type("gcp:monitoring/alertPolicy:AlertPolicy"), key=lambda r: r.name)
    dashboards = plan.of_type("gcp:monitoring/dashboard:Dashboard")
    if not policies and not dashboards:
        return []
    lines = ["", "## Monitoring", ""]
    if policies:
        lines += ["| alert | severity | condition |", "|---|---|---|"]
        for r in policies:
            for c in r.inputs.get("conditions") or []:
                kind = next((k for k in ("conditionThreshold", "conditionAbsent", "conditionMatchedLog", "conditionPrometheusQueryLanguage") if k in c), "")
                body = c.get(kind, {})
                what = body.get("filter", body.get("query", ""))
                if kind == "conditionThreshold":
                    what += f" {'>' if body.get('comparison') == 'COMPARISON_GT' else body.get('comparison')} {body.get('thresholdValue')} for {body.get('duration')}"
                elif kind == "conditionAbsent":
                    what = f"no data for {body.get('duration')}: {what}"
                elif kind == "conditionMatchedLog":
                    what = f"log entry matching: {what}"
                elif kind == "conditionPrometheusQueryLanguage":
                    what = f"PromQL for {body.get('duration')}: {what}"
                lines.append(f"| {r.inputs.get('displayName')} | {r.inputs.get('severity', '')} | `{what}` |".replace("\n", " "))
    for r in dashboards:
        raw = r.inputs.get("dashboardJson")
        if not isinstance(raw, str):
            lines += ["", "Dashboard: layout unknown until apply."]
            continue
        layout = json.loads(raw)
        lines += ["", f"Dashboard `{layout.get('displayName')}` (components/dashboard.json):", ""]
        for tile in sorted(layout["mosaicLayout"]["tiles"], key=lambda t: (t.get("yPos", 0), t.get("xPos", 0))):
            widget = tile["widget"]
            queries = [d["timeSeriesQuery"] for d in widget.get("xyChart", {}).get("dataSets", [])]
            metric = ", ".join(sorted({m for q in queries for m in re.findall(r'metric.type = "([^"]+)"', q.get("timeSeriesFilter", {}).get("filter", ""))}
                                      | {"PromQL: " + q["prometheusQuery"] for q in queries if "prometheusQuery" in q}))
            lines.append(f"- ({tile.get('xPos', 0)},{tile.get('yPos', 0)} {tile['width']}x{tile['height']}) **{widget['title']}**: `{metric}`")
    return lines


def changes_from(previous: dict[str, Any], plan: Plan) -> list[dict[str, Any]]:
    """The steps a preview would show from a stack whose state is `previous` (a plan's resources: type, urn,
    protect, inputs) to `plan`, by URN: create, delete, update (inputs or protect differ), same. Replacements
    are not modelled (their reasons live in the provider); the guard's kinds below only need the URNs."""
    def comparable(inputs: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in inputs.items() if k != "metadata"}

    old = {r["urn"]: r for r in previous["resources"] if r.get("custom", True)}
    new = {r.urn: r for r in plan.resources if r.custom}
    steps = []
    for urn in sorted(old.keys() | new.keys()):
        if urn not in old:
            steps.append({"op": "create", "urn": urn})
        elif urn not in new:
            steps.append({"op": "delete", "urn": urn, "oldState": {"inputs": old[urn]["inputs"]}})
        else:
            changed = sorted(k for k in set(comparable(old[urn]["inputs"])) | set(comparable(new[urn].inputs))
                             if old[urn]["inputs"].get(k) != new[urn].inputs.get(k))
            if old[urn].get("protect") != new[urn].protect:
                changed.append("(protect)")
            steps.append({"op": "update" if changed else "same", "urn": urn, "diffs": changed})
    return steps


def render_changes(previous: dict[str, Any], plan: Plan, source: str) -> str:
    """The move as one update and as the documented two steps (docs/updates.md), each through the data guard."""
    from tools.guard_data import destructive_steps, resource_type, unsafe_moves

    steps = changes_from(previous, plan)
    lines = ["", f"## Steps from {source}", "", "| op | type | name | changed |", "|---|---|---|---|"]
    for step in steps:
        if step["op"] != "same":
            lines.append(f"| {step['op']} | {resource_type(step['urn']).split(':')[-1]} | {step['urn'].rsplit('::', 1)[-1]} | "
                         f"{', '.join(step.get('diffs') or [])} |")
    lines.append(f"\n{sum(s['op'] == 'same' for s in steps)} resources unchanged.")

    def verdict(part: list[dict[str, Any]]) -> str:
        moves, found = unsafe_moves({"steps": part}), destructive_steps({"steps": part})
        if moves:
            return "REFUSED: " + "; ".join(moves)
        return "REFUSED: " + "; ".join(line for _, line in found) if found else "passes"

    # Step 1 of the documented move: `pulumi destroy --target <bare VM> --target-dependents`.
    bare = [s for s in steps if s["op"] == "delete" and resource_type(s["urn"]) in ("gcp:compute/instance:Instance",
                                                                                   "gcp:compute/instanceGroupMembership:InstanceGroupMembership")]
    rest = [s for s in steps if s not in bare]
    lines += ["", "Data guard (tools/guard_data.py):", "", f"- as one `pulumi up`: {verdict(steps)}"]
    if bare:
        lines += [f"- step 1, `pulumi destroy --target <bare VM> --target-dependents` ({len(bare)} deleted): {verdict(bare)}",
                  f"- step 2, `pulumi up`: {verdict(rest)}"]
    return "\n".join(lines) + "\n"


def _override(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{item!r} is not KEY=VALUE, e.g. --set database.tier=db-custom-2-7680")
    return key, value


def main(argv: list[str] | None = None) -> int:
    from tools import clis

    clis.require_modules("tools.plan", ["yaml", "pulumi", "pulumi_gcp", "pydantic"])
    parser = argparse.ArgumentParser(prog="python -m tools.plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stack", help="a stack with a Pulumi.<stack>.yaml: " + ", ".join(stacks()))
    parser.add_argument("--json", action="store_true", help="print every recorded resource as JSON")
    parser.add_argument("--set", action="append", default=[], type=_override, metavar="KEY=VALUE", help="override a config key (see above)")
    parser.add_argument("--from", dest="previous", type=Path, metavar="PLAN.json",
                        help="also show the steps from that earlier plan to this one and the data guard's verdict "
                             "(e.g. tests/fixtures/bare_vm/dev.json, a stack built with the bare VM)")
    options = parser.parse_args(argv)  # exits 2 with a one-line message on a bad --set
    try:
        stack_config(options.stack, dict(options.set))  # usage errors before the SDK starts
    except UsageError as error:
        parser.error(str(error))
    plan = run_program(options.stack, dict(options.set))
    if plan.placeholders:
        print(placeholder_notice(plan), file=sys.stderr)
    if options.json:
        print(json.dumps(asdict(plan), indent=1, sort_keys=True))
    else:
        print(render_markdown(plan), end="")
        if options.previous and not plan.error:
            print(render_changes(json.loads(options.previous.read_text()), plan, str(options.previous)), end="")
    return 1 if plan.error else 0


if __name__ == "__main__":
    sys.exit(main())
