"""Run this example offline under the Pulumi SDK's mocks, with the referenced stack's outputs
given as JSON, and print what it declares and exports (JSON). No credentials, no backend.

    python examples/consumer/offline.py --outputs outputs.json --stack dev \
        --set convex-consumer:deployerMember=serviceAccount:ci@p.iam.gserviceaccount.com

The StackReference is a resource of type `pulumi:pulumi:StackReference`; the mocks answer it with
the given outputs, the way the engine would from the referenced stack's state."""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
from pathlib import Path
from typing import Any

import pulumi

HERE = Path(__file__).resolve().parent


class ConsumerMocks(pulumi.runtime.Mocks):
    def __init__(self, outputs: dict[str, Any]):
        self.outputs = outputs
        self.references: list[str] = []
        self.resources: list[dict[str, Any]] = []

    def new_resource(self, args):
        if args.typ == "pulumi:pulumi:StackReference":
            name = args.inputs.get("name") or args.name
            self.references.append(name)
            return name, {"name": name, "outputs": self.outputs, "secretOutputNames": []}
        self.resources.append({"type": args.typ, "name": args.name, "inputs": dict(args.inputs)})
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args):
        return {}, None


def run(outputs: dict[str, Any], stack: str, config: dict[str, str]) -> dict[str, Any]:
    from pulumi.runtime.settings import get_root_resource
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    mocks = ConsumerMocks(outputs)
    pulumi.runtime.set_mocks(mocks, project="convex-consumer", stack=stack, preview=False)
    pulumi.runtime.set_all_config(config)
    result: dict[str, Any] = {"error": ""}
    cwd = os.getcwd()
    os.chdir(HERE)
    try:
        _sync_await(run_pulumi_func(lambda: runpy.run_path(str(HERE / "__main__.py"), run_name="__main__")))
        exports = {}
        for key, value in get_root_resource().outputs.items():
            exports[key] = _sync_await(pulumi.Output.from_input(value).future())
        result["exports"] = exports
    except Exception as error:  # noqa: BLE001 (report any program failure as data)
        result["error"] = f"{type(error).__name__}: {error}"
    finally:
        os.chdir(cwd)
    result["references"] = mocks.references
    result["resources"] = mocks.resources
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outputs", required=True, help="JSON file: the referenced stack's outputs")
    parser.add_argument("--stack", default="dev")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    options = parser.parse_args(argv)
    outputs = json.loads(Path(options.outputs).read_text())
    result = run(outputs, options.stack, dict(item.split("=", 1) for item in options.set))
    print(json.dumps(result, indent=1, sort_keys=True, default=repr))
    return 1 if result["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
