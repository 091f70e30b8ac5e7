"""The per-session directory: tests/conftest.py makes it on the controller (0711: traversable by the
postgres user) and removes it at the end; xdist workers inherit its path through the environment, so
what one worker builds there (a program run, the template PostgreSQL cluster, the stand-in client)
the others read instead of building again."""

from __future__ import annotations

import atexit
import fcntl
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")

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


def once_per_session(name: str, make: Callable[[], T]) -> T:
    """`make()` once per session for this name, by whichever process asks first: the others wait for
    it and load its result (pickled in the session directory)."""
    entry = session_dir() / f"{name}.pickle"
    with open(entry.with_suffix(".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second worker waits for the first one's result
        if entry.exists():
            return pickle.loads(entry.read_bytes())
        value = make()
        entry.with_suffix(".tmp").write_bytes(pickle.dumps(value))
        entry.with_suffix(".tmp").replace(entry)
        return value
