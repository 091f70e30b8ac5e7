from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from sandbox import SCRIPT

from convex_gcp.runtime import HEALTH_DIR  # noqa: E402

ISOLATE = SCRIPT.parent / "isolate.sh"
EXPORT = SCRIPT.parent / "convex-export.sh"


METRICS = SCRIPT.parent / "convex-metrics.sh"


@pytest.mark.parametrize("script", [SCRIPT, ISOLATE, EXPORT, HEALTH_DIR / "health.sh", METRICS],
                         ids=["startup.sh", "isolate.sh", "convex-export.sh", "health.sh", "convex-metrics.sh"])
def test_shellcheck_clean(script):
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is required in CI (apt-get install shellcheck)")
        pytest.skip("shellcheck not installed")
    p = subprocess.run(["shellcheck", "--severity=style", str(script)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "shellcheck disable" not in script.read_text()
