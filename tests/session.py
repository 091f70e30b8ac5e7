"""The per-session directory: tests/conftest.py makes it on the controller (0711: traversable by the
postgres user) and removes it at the end; xdist workers inherit its path through the environment, so
what one worker builds there (a program run, the template PostgreSQL cluster, the stand-in client)
the others read instead of building again."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

SESSION_DIR = "CONVEX_GCP_TEST_SESSION_DIR"

_private_dir: Path | None = None


def session_dir() -> Path:
    """The session's directory; outside a pytest session (a script, a benchmark) a private one of this
    process's, removed at its exit."""
    global _private_dir
    if os.environ.get(SESSION_DIR):
        return Path(os.environ[SESSION_DIR])
    if _private_dir is None:
        _private_dir = Path(tempfile.mkdtemp(prefix="convex-gcp-session-"))
        os.chmod(_private_dir, 0o711)
        atexit.register(shutil.rmtree, _private_dir, True)
    return _private_dir
