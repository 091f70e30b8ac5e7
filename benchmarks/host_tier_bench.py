"""Wall time of the host tier (tests/host): runs `pytest -q tests/host` and PRINTS how long the whole run
and each test took (pytest --durations), and whether the root file systems came from the cache. It
asserts nothing about time; the goal is under 5 minutes with a warm cache (tests/host/README.md).

    python benchmarks/host_tier_bench.py [pytest args...]      (as root)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.host.machine import CACHE  # noqa: E402


def main() -> int:
    cached = sorted(p.name for p in CACHE.glob("*.tar")) if CACHE.exists() else []
    print(f"cache {CACHE}: {', '.join(cached) or 'empty (cold: debootstrap runs)'}", flush=True)
    t0 = time.monotonic()
    p = subprocess.run([str(ROOT / ".venv" / "bin" / "pytest"), "-q", "--durations=0", "tests/host", *sys.argv[1:]],
                       cwd=ROOT)
    wall = time.monotonic() - t0
    print(f"host tier: {wall:.0f} s wall ({wall / 60:.1f} min), pytest exit {p.returncode}")
    return p.returncode


if __name__ == "__main__":
    raise SystemExit(main())
