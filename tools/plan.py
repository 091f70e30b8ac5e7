"""Offline plan: run __main__.py for a stack under the Pulumi SDK's mocks and show what it
declares. Tests and reviewers use the same code.

    python -m tools.plan dev                 # Markdown summary
    python -m tools.plan prod --json         # everything recorded, as JSON
    python -m tools.plan dev --set convex-gcp:connectionMode=ssl
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import runpy
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

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


@dataclass
class Plan:
    stack: str
    resources: list[Declared]
    outputs: dict[str, dict[str, Any]]
    warnings: list[str]
    error: str = ""

    def of_type(self, typ: str) -> list[Declared]:
        return [r for r in self.resources if r.type == typ]

    def one(self, typ: str) -> Declared:
        found = self.of_type(typ)
        if len(found) != 1:
            raise AssertionError(f"expected one {typ}, found {len(found)}")
        return found[0]

    def by_name(self, name: str) -> Declared:
        return next(r for r in self.resources if r.name == name)


def stack_config(stack: str, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The flat config map the engine would pass: `ns:key` → string (objects as JSON)."""
    document = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text()) or {}
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
    config.update(overrides or {})
    return config


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
                        dependencies=list(request.dependencies),
                        protect=bool(request.protect),
                        ignore_changes=list(request.ignoreChanges),
                        import_id=request.importId,
                        custom=bool(request.custom),
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
    return Plan(stack, resources, outputs, warnings, error)


def plan_from_json(text: str) -> Plan:
    data = json.loads(text)
    return Plan(data["stack"], [Declared(**r) for r in data["resources"]], data["outputs"], data["warnings"], data["error"])


# --------------------------------------------------------------------------- rendering

_KEY_SETTINGS = {
    "gcp:sql/databaseInstance:DatabaseInstance": ["databaseVersion", "settings.tier", "settings.edition", "settings.availabilityType",
        "settings.ipConfiguration.ipv4Enabled", "settings.ipConfiguration.sslMode", "settings.ipConfiguration.serverCaMode", "settings.connectorEnforcement",
        "settings.backupConfiguration.pointInTimeRecoveryEnabled", "settings.databaseFlags", "deletionProtection",
        "settings.deletionProtectionEnabled"],
    "gcp:compute/instance:Instance": ["machineType", "zone", "bootDisk.initializeParams.image", "serviceAccount.scopes",
        "shieldedInstanceConfig", "deletionProtection"],
    "gcp:compute/firewall:Firewall": ["allows", "sourceRanges"],
    "gcp:servicenetworking/connection:Connection": ["deletionPolicy"],
    "gcp:compute/globalAddress:GlobalAddress": ["purpose", "prefixLength"],
    "gcp:sql/user:User": ["name", "type", "databaseRoles"],
    "gcp:projects/iAMMember:IAMMember": ["role"],
    "gcp:secretmanager/secretIamMember:SecretIamMember": ["role"],
}


def _get(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def render_markdown(plan: Plan) -> str:
    if plan.error:
        return f"# Stack `{plan.stack}`: configuration error\n\n```\n{plan.error}\n```\n"
    lines = [f"# Stack `{plan.stack}`", "", f"{sum(r.custom for r in plan.resources)} resources.", "", "## Resources", ""]
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
    vm = [r for r in plan.resources if r.type == "gcp:compute/instance:Instance"]
    if vm:
        lines += ["", "## VM runtime settings (instance metadata)", ""]
        for key, value in sorted((vm[0].inputs.get("metadata") or {}).items()):
            if key == "startup-script":
                lines.append(f"- `startup-script`: vm/startup.sh ({len(value.splitlines())} lines)")
            elif "\n" in value:
                lines += [f"- `{key}`:", "", "```", value.rstrip("\n"), "```", ""]
            else:
                lines.append(f"- `{key}`: `{value}`")
    lines += ["", "## Outputs", "", "| name | value |", "|---|---|"]
    for key, out in sorted(plan.outputs.items()):
        lines.append(f"| {key} | {'[secret]' if out['secret'] else '`' + str(out['value']) + '`'} |")
    if plan.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in plan.warnings]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stack")
    parser.add_argument("--json", action="store_true", help="print every recorded resource as JSON")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    options = parser.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in options.set)
    plan = run_program(options.stack, overrides)
    if options.json:
        print(json.dumps(asdict(plan), indent=1, sort_keys=True))
    else:
        print(render_markdown(plan), end="")
    if plan.error and not options.json:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
