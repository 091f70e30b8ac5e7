"""tests/conftest.py's skip rules: a run that skipped says which tests and why in its last
lines, also under pytest-xdist; with CI set, a skip (a test's or a module's) is a failure."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests import runner

ROOT = Path(__file__).resolve().parent.parent

CONFTEST = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport, pytest_terminal_summary  # noqa: F401
"""
TESTS = """
import pytest

def test_runs():
    pass

def test_needs_a_tool():
    pytest.skip("frobnicate not installed")

@pytest.mark.xfail(reason="known bug", strict=False)
def test_known_bug():
    assert False
"""
MODULE_SKIP = """
import pytest
pytest.importorskip("no_such_module_for_convex_gcp")

def test_never_collected():
    pass
"""


def run(tmp_path: Path, *args: str, ci: str | None = None, target: str = "") -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_demo.py").write_text(TESTS)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    # `python -m pytest …`, forked from the program-run server (tests/runner.py): like a fresh
    # interpreter, without paying for one and pytest's imports each time.
    command = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path / target), *args]
    return runner.run_python(command, cwd=tmp_path, env=env, timeout=120)


# One xdist worker is enough: its reports reach the controller the way any worker's do.
@pytest.mark.parametrize("workers", [[], ["-n", "1"]], ids=["serial", "xdist"])
def test_skips_are_named_with_their_reason_at_the_end(tmp_path, workers):
    result = run(tmp_path, *workers)
    assert result.returncode == 0, result.stdout
    tail = result.stdout.strip().splitlines()[-4:]
    assert any("SKIPPED test_demo.py::test_needs_a_tool: frobnicate not installed" in line for line in tail), result.stdout
    assert "test_known_bug" not in "\n".join(tail)  # an xfail is not a skip


@pytest.mark.parametrize("workers", [[], ["-n", "1"]], ids=["serial", "xdist"])
def test_ci_turns_a_skip_into_a_failure(tmp_path, workers):
    result = run(tmp_path, *workers, ci="1")
    assert result.returncode == 1, result.stdout
    assert "skipped under CI=1, where every test must run: frobnicate not installed" in result.stdout
    assert "1 failed" in result.stdout and "xfailed" in result.stdout


def test_ci_fails_a_module_level_importorskip(tmp_path):
    (tmp_path / "test_optional.py").write_text(MODULE_SKIP)
    quiet = run(tmp_path, target="test_optional.py")
    # Exit 5: no test ran; the skip is still named at the end.
    assert quiet.returncode == 5 and "SKIPPED test_optional.py: could not import" in quiet.stdout, quiet.stdout
    result = run(tmp_path, ci="true", target="test_optional.py")
    # A collection error: pytest stops with exit 2.
    assert result.returncode == 2 and "skipped under CI=true, where every test must run" in result.stdout, result.stdout
    assert "no_such_module_for_convex_gcp" in result.stdout


def test_ci_zero_means_off(tmp_path):
    assert run(tmp_path, ci="0").returncode == 0


def test_this_conftest_loads_without_xdist():
    """`-p no:xdist` (pytest.ini) must still work: with xdist's hook specifications absent, the
    check pytest makes after loading a conftest (PluginManager.check_pending) must find no hook it
    does not know, so the xdist hook here is marked optional."""
    from _pytest.config import PytestPluginManager

    from tests import conftest

    manager = PytestPluginManager()  # pytest's own hook specifications, none of xdist's
    manager.register(conftest)
    manager.check_pending()
