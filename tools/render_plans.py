"""Refresh the committed offline-plan renderings, docs/plans/<stack>.md, one per Pulumi.<stack>.yaml.

    python -m tools.render_plans            # rewrite every stale rendering
    python -m tools.render_plans --check    # exit 1 and name the stale ones, change nothing

A pull request that changes config or the program changes these files too, so reviewers read the
effect as a Markdown diff without cloud credentials."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
PLANS = ROOT / "docs" / "plans"
REFRESH_COMMAND = "python -m tools.render_plans"


def stacks() -> list[str]:
    return sorted(p.name[len("Pulumi."):-len(".yaml")] for p in ROOT.glob("Pulumi.*.yaml"))


def gcp_stacks() -> list[str]:
    """The stacks that deploy to Google Cloud (not `convex-gcp:target: local`, docs/local.md)."""
    from tools.plan import stack_config

    return [s for s in stacks() if stack_config(s).get("convex-gcp:target", "gcp") == "gcp"]


def run_python(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def render(stack: str, run: Callable[..., subprocess.CompletedProcess] = run_python) -> str:
    """The Markdown `python -m tools.plan <stack>` prints; one process per stack because the SDK's
    mock state is process-global (the tests pass tests.runner.run_python: the same, forked warm)."""
    result = run(["-m", "tools.plan", stack], cwd=ROOT, timeout=300)
    if result.returncode != 0 or not result.stdout.startswith("# Stack"):
        raise RuntimeError(f"python -m tools.plan {stack} failed:\n{result.stdout[-2000:]}{result.stderr[-4000:]}")
    return result.stdout


def stale(stack: str) -> bool:
    path = PLANS / f"{stack}.md"
    return not path.exists() or path.read_text() != render(stack)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=REFRESH_COMMAND, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report stale renderings")
    options = parser.parse_args(argv)
    PLANS.mkdir(parents=True, exist_ok=True)
    outdated = []
    for stack in stacks():
        text, path = render(stack), PLANS / f"{stack}.md"
        if path.exists() and path.read_text() == text:
            continue
        outdated.append(stack)
        if not options.check:
            path.write_text(text)
    for stack in outdated:
        print(f"{'stale' if options.check else 'refreshed'}: docs/plans/{stack}.md")
    return 1 if options.check and outdated else 0


if __name__ == "__main__":
    sys.exit(main())
