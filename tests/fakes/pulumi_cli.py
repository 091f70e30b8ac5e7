"""Stand-in `pulumi` CLI for tools/acceptance.py, installed on PATH. Records every call as a JSON
line in $FAKE_PULUMI_LOG and keeps per-stack state in $FAKE_PULUMI_STATE. Behaviour copied from
pulumi/pulumi:
- `up --event-log PATH` exists only with PULUMI_DEBUG_COMMANDS set (up.go: env.DebugCommands);
  without it cobra answers "unknown flag: --event-log".
- the event log is one apitype.EngineEvent JSON per line with `sequence` and Unix-seconds `timestamp`
  (display startEventLogger); resourcePreEvent, then resOutputsEvent or resOpFailedEvent per step.
- `stack rm` without --force refuses while resources remain: "error: '<stack>' still has resources;
  removal rejected; pass --force to override"; on success it deletes Pulumi.<stack>.yaml (stack_rm.go).
- `stack init` of an existing stack fails ("stack '<name>' already exists").
$FAKE_PULUMI_FAIL names the commands that fail (up, destroy, init); $FAKE_PULUMI_OUTPUTS is the
JSON `stack output --json` prints.

Upstream: https://github.com/pulumi/pulumi/tree/master/pkg/cmd/pulumi (up.go, stack_rm.go, stack_init.go),
https://github.com/pulumi/pulumi/blob/master/sdk/go/common/apitype/events.go (EngineEvent),
https://www.pulumi.com/docs/iac/cli/commands/pulumi_stack_rm/."""

import json
import os
import sys
from pathlib import Path

args = sys.argv[1:]
state_dir = Path(os.environ["FAKE_PULUMI_STATE"])
failing = set(os.environ.get("FAKE_PULUMI_FAIL", "").split(","))
with open(os.environ["FAKE_PULUMI_LOG"], "a") as log:
    log.write(json.dumps({"args": args, "cwd": os.getcwd(), "debug": os.environ.get("PULUMI_DEBUG_COMMANDS", "")}) + "\n")


def flag(name):
    return args[args.index(name) + 1] if name in args else None


stack = flag("--stack")
state = state_dir / f"{stack}.json"
TYPES = ["pulumi:pulumi:Stack", "docker:index/network:Network", "docker:index/container:Container"]


def urn(typ, name):
    return f"urn:pulumi:{stack}::convex-gcp::{typ}::{name}"


if args[:2] == ["stack", "init"]:
    name = args[2]
    stack = name
    state = state_dir / f"{name}.json"
    if state.exists() or "init" in failing:
        sys.exit(f"error: stack '{name}' already exists")
    state.write_text(json.dumps({"resources": []}))
    sys.exit(0)
if not state.exists():
    sys.exit(f"error: no stack named '{stack}' found")
data = json.loads(state.read_text())
if args[0] == "up":
    if "--event-log" in args and os.environ.get("PULUMI_DEBUG_COMMANDS", "").lower() not in ("1", "true"):
        sys.exit("error: unknown flag: --event-log")
    events, seq, now = [], 0, 1_764_460_800
    for i, typ in enumerate(TYPES):
        meta = {"op": "create", "urn": urn(typ, f"r{i}"), "type": typ, "provider": ""}
        events.append({"sequence": seq, "timestamp": now, "resourcePreEvent": {"metadata": meta}})
        seq += 1
        now += 10 * (i + 1)
        if "up" in failing and i == len(TYPES) - 1:
            events.append({"sequence": seq, "timestamp": now, "resOpFailedEvent": {"metadata": meta, "status": 1, "steps": 0}})
            break
        events.append({"sequence": seq, "timestamp": now, "resOutputsEvent": {"metadata": meta}})
        seq += 1
        data["resources"].append(meta["urn"])
    if flag("--event-log"):
        Path(flag("--event-log")).write_text("".join(json.dumps(e) + "\n" for e in events))
    state.write_text(json.dumps(data))
    sys.exit(255 if "up" in failing else 0)
if args[:2] == ["stack", "output"]:
    print(Path(os.environ["FAKE_PULUMI_OUTPUTS"]).read_text())
    sys.exit(0)
if args[0] == "destroy":
    if "destroy" in failing:
        sys.exit("error: update failed")
    data["resources"] = []
    state.write_text(json.dumps(data))
    sys.exit(0)
if args[:2] == ["stack", "rm"]:
    if data["resources"] and "--force" not in args:
        sys.exit(f"error: '{stack}' still has resources; removal rejected; pass --force to override")
    state.unlink()
    Path(f"Pulumi.{stack}.yaml").unlink(missing_ok=True)
    sys.exit(0)
sys.exit(f"stand-in pulumi: unexpected {args}")
