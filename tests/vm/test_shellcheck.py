from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from sandbox import SCRIPT


def test_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is required in CI (apt-get install shellcheck)")
        pytest.skip("shellcheck not installed")
    p = subprocess.run(["shellcheck", "--severity=style", str(SCRIPT)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "shellcheck disable" not in SCRIPT.read_text()
