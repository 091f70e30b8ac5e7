"""Shared fixtures: whole-program runs under the Pulumi SDK's mocks, one subprocess per run
because the SDK's mock state is process-global."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.plan import Plan, plan_from_json  # noqa: E402


@lru_cache(maxsize=None)
def _run(stack: str, overrides: tuple[tuple[str, str], ...]) -> Plan:
    command = [sys.executable, "-m", "tools.plan", stack, "--json"]
    for key, value in overrides:
        command += ["--set", f"{key}={value}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"plan {stack} failed:\n{result.stderr[-4000:]}")
    return plan_from_json(result.stdout)


def run_plan(stack: str, **overrides: str) -> Plan:
    """Run __main__.py for a stack file; overrides are `ns:key` → value (objects as JSON text)."""
    return _run(stack, tuple(sorted((k.replace("__", ":"), v) for k, v in overrides.items())))


def run_plan_with(stack: str, overrides: dict[str, str]) -> Plan:
    return _run(stack, tuple(sorted(overrides.items())))


@pytest.fixture(scope="session")
def dev_plan() -> Plan:
    return run_plan("dev")


@pytest.fixture(scope="session")
def prod_plan() -> Plan:
    return run_plan("prod")


def stack_object(stack: str, key: str) -> dict:
    """A config object from a stack file, for tests that change one field of it."""
    from tools.plan import stack_config

    return json.loads(stack_config(stack)[f"convex-gcp:{key}"])
