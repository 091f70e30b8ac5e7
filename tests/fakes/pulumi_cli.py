"""Stand-in `pulumi` CLI for tools/acceptance.py: a bash client on PATH whose calls run here, in the
test process (tests/fakes/standin.py), not a Python start per call. Records every call as a JSON
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
from pathlib import Path

from tests.fakes import standin

# What the stand-in reads of the caller's environment (the first names the call's state directory).
ENV = ("FAKE_PULUMI_STATE", "FAKE_PULUMI_LOG", "FAKE_PULUMI_FAIL", "FAKE_PULUMI_OUTPUTS", "PULUMI_DEBUG_COMMANDS", "PWD")
TYPES = ["pulumi:pulumi:Stack", "docker:index/network:Network", "docker:index/container:Container"]


class _Exit(Exception):
    """sys.exit(message) of a CLI: the message on stderr, exit status 1 (or the one given)."""

    def __init__(self, message: str = "", status: int = 1) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def pulumi(tool: str, args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    try:
        return 0, _pulumi(args, env), ""
    except _Exit as exit_:
        return exit_.status, "", f"{exit_.message}\n" if exit_.message else ""


def _pulumi(args: list[str], env: dict[str, str]) -> str:
    # bash sets PWD to the directory it was started in (https://www.gnu.org/software/bash/manual/bash.html#Bash-Variables).
    cwd = Path(env["PWD"])
    state_dir = Path(env["FAKE_PULUMI_STATE"])
    failing = set(env["FAKE_PULUMI_FAIL"].split(","))
    with open(env["FAKE_PULUMI_LOG"], "a") as log:
        log.write(json.dumps({"args": args, "cwd": str(cwd), "debug": env["PULUMI_DEBUG_COMMANDS"]}) + "\n")

    def flag(name):
        return args[args.index(name) + 1] if name in args else None

    stack = flag("--stack")

    def urn(typ, name):
        return f"urn:pulumi:{stack}::convex-gcp::{typ}::{name}"

    if args[:2] == ["stack", "init"]:  # pkg/cmd/pulumi/stack_init.go: "stack '<name>' already exists"
        state = state_dir / f"{args[2]}.json"
        if state.exists() or "init" in failing:
            raise _Exit(f"error: stack '{args[2]}' already exists")
        state.write_text(json.dumps({"resources": []}))
        return ""
    state = state_dir / f"{stack}.json"
    if not state.exists():
        raise _Exit(f"error: no stack named '{stack}' found")
    data = json.loads(state.read_text())
    if args[0] == "up":
        # pkg/cmd/pulumi/up.go registers --event-log only under env.DebugCommands (PULUMI_DEBUG_COMMANDS).
        if "--event-log" in args and env["PULUMI_DEBUG_COMMANDS"].lower() not in ("1", "true"):
            raise _Exit("error: unknown flag: --event-log")
        # One apitype.EngineEvent per line (https://github.com/pulumi/pulumi/blob/master/sdk/go/common/apitype/events.go).
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
            (cwd / flag("--event-log")).write_text("".join(json.dumps(e) + "\n" for e in events))
        state.write_text(json.dumps(data))
        if "up" in failing:
            raise _Exit(status=255)
        return ""
    if args[:2] == ["stack", "output"]:
        return Path(env["FAKE_PULUMI_OUTPUTS"]).read_text() + "\n"
    if args[0] == "destroy":
        if "destroy" in failing:
            raise _Exit("error: update failed")
        data["resources"] = []
        state.write_text(json.dumps(data))
        return ""
    if args[:2] == ["stack", "rm"]:  # pkg/cmd/pulumi/stack_rm.go; https://www.pulumi.com/docs/iac/cli/commands/pulumi_stack_rm/
        if data["resources"] and "--force" not in args:
            raise _Exit(f"error: '{stack}' still has resources; removal rejected; pass --force to override")
        state.unlink()
        (cwd / f"Pulumi.{stack}.yaml").unlink(missing_ok=True)
        return ""
    raise _Exit(f"stand-in pulumi: unexpected {args}")


def install(bin_dir: Path) -> None:
    """Put the `pulumi` client into bin_dir."""
    standin.shared(pulumi, ENV, "tests/fakes/pulumi_cli.py").install(bin_dir, ["pulumi"])
