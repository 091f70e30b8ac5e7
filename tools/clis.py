"""The command-line programs the tools run, and one line saying how to install a missing one.

Every tool calls `require(...)` before its first step, so a missing CLI is reported as
`<tool>: needs <cli> (not found on PATH); install: <how>` with exit status 2, never a traceback."""

from __future__ import annotations

import shutil
import sys
from typing import Iterable, NoReturn

# How to install each CLI (the vendors' install pages; Node brings npm and npx).
INSTALL = {
    "pulumi": "curl -fsSL https://get.pulumi.com | sh (https://www.pulumi.com/docs/iac/download-install/)",
    "gcloud": "the Google Cloud CLI, https://cloud.google.com/sdk/docs/install, then `gcloud auth login`",
    "node": "Node.js 20 or later, https://nodejs.org/en/download (brings npm and npx)",
    "npm": "Node.js 20 or later, https://nodejs.org/en/download (brings npm and npx)",
    "npx": "Node.js 20 or later, https://nodejs.org/en/download (brings npm and npx)",
    "docker": "Docker Engine, https://docs.docker.com/engine/install/ (the local stack runs on it)",
}
EXIT_MISSING = 2


class MissingCli(Exception):
    """A CLI a step needs is not on PATH; str() is the one line to print."""

    def __init__(self, tool: str, missing: list[str]):
        self.missing = missing
        by_how: dict[str, list[str]] = {}
        for name in missing:
            by_how.setdefault(INSTALL.get(name, "install it and put it on PATH"), []).append(name)
        how = "; ".join(f"{', '.join(names)}: {text}" for text, names in by_how.items())
        super().__init__(f"{tool}: needs {', '.join(missing)} (not found on PATH). Install {how}")


def missing(names: Iterable[str]) -> list[str]:
    return [name for name in dict.fromkeys(names) if shutil.which(name) is None]


def check(tool: str, names: Iterable[str]) -> None:
    """Raise MissingCli naming every CLI of `names` that is not on PATH."""
    absent = missing(names)
    if absent:
        raise MissingCli(tool, absent)


def require(tool: str, names: Iterable[str]) -> None:
    """For a tool's main(): print the one line and exit 2 when a CLI is missing."""
    try:
        check(tool, names)
    except MissingCli as error:
        fail(error)


def fail(error: MissingCli) -> NoReturn:
    print(str(error), file=sys.stderr)
    raise SystemExit(EXIT_MISSING)


def require_modules(tool: str, modules: Iterable[str]) -> None:
    """For a tool's main(): the Python packages it imports, from the project's venv."""
    import importlib.util

    absent = [name for name in dict.fromkeys(modules) if importlib.util.find_spec(name) is None]
    if absent:
        print(f"{tool}: needs the Python packages {', '.join(absent)} (not importable by {sys.executable}). Install them in the "
              "project's venv: python3 -m venv .venv && .venv/bin/pip install --require-hashes -r requirements-dev.lock, "
              f"then run .venv/bin/python -m {tool}", file=sys.stderr)
        raise SystemExit(EXIT_MISSING)
