"""Every tool run without the CLIs it needs says in one line what is missing and how to install it,
and exits 2 with no traceback (tools/clis.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tools import clis

CASES = [
    (["tools.doctor", "dev"], ["gcloud", "pulumi"]),
    (["tools.doctor", "dev", "--outputs", "out.json"], ["gcloud"]),
    (["tools.e2e", "dev"], ["node", "npm", "npx", "pulumi"]),
    (["tools.e2e", "dev", "--outputs", "out.json"], ["node", "npm", "npx"]),
    (["tools.acceptance", "local"], ["pulumi", "node", "npm", "npx", "docker"]),
    (["tools.acceptance", "gcp"], ["pulumi", "node", "npm", "npx", "gcloud"]),
    (["tools.acceptance", "gcp", "--cleanup", "--run-id", "7"], ["pulumi"]),
    (["tools.bump"], ["gcloud"]),
]


def run_without_clis(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    empty = tmp_path / "bin"
    empty.mkdir(exist_ok=True)
    env = {**os.environ, "PATH": str(empty)}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, needed", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_missing_cli_is_one_line_and_exit_2(args, needed, tmp_path):
    result = run_without_clis(args, tmp_path)
    assert result.returncode == clis.EXIT_MISSING, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"{args[0]}: needs {', '.join(needed)} (not found on PATH). Install ")
    for name in needed:
        assert clis.INSTALL[name] in line


def test_plan_needs_no_cli(tmp_path):
    result = run_without_clis(["tools.plan", "dev"], tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("# Stack `dev`"), result.stderr


def test_plan_outside_the_venv_names_the_venv(tmp_path):
    # An interpreter without the SDK (-I -S: no site-packages, so no pulumi): one line, exit 2.
    result = subprocess.run([sys.executable, "-I", "-S", "-c", "import sys; sys.path.insert(0, sys.argv[1]); from tools import plan; plan.main(['dev'])",
                             str(ROOT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("tools.plan: needs the Python packages yaml, pulumi, pulumi_gcp, pydantic") and "requirements-dev.lock" in line


def test_the_secret_manager_read_is_checked_when_it_comes(monkeypatch, tmp_path):
    from tools import e2e

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CONVEX_SELF_HOSTED_ADMIN_KEY", raising=False)
    with pytest.raises(clis.MissingCli, match="^tools.e2e: needs gcloud "):
        e2e.admin_key({"admin_key_secret": "projects/p/secrets/s"})


def test_admin_key_env_names_the_variable(monkeypatch):
    from tools import e2e

    monkeypatch.setenv("MY_KEY", "from-my-key")
    assert e2e.admin_key({}, "MY_KEY") == "from-my-key"
    help_text = subprocess.run([sys.executable, "-m", "tools.e2e", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    assert "--admin-key-env NAME" in help_text
