from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from sandbox import REPO, SCRIPT

from convex_gcp.runtime import HEALTH_DIR  # noqa: E402


@pytest.mark.parametrize("script", [*sorted((REPO / "vm").glob("*.sh")), HEALTH_DIR / "health.sh"], ids=lambda p: p.name)
def test_shellcheck_clean(script):
    """startup.sh and the small scripts its units run (vm/*.sh: isolate.sh, convex-export.sh, convex-upgrade.sh, ...)."""
    assert {SCRIPT.name, "isolate.sh", "convex-export.sh", "convex-upgrade.sh"} <= {p.name for p in (REPO / "vm").glob("*.sh")}
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is required in CI (apt-get install shellcheck)")
        pytest.skip("shellcheck not installed")
    p = subprocess.run(["shellcheck", "--severity=style", str(script)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "shellcheck disable" not in script.read_text()
