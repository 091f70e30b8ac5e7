"""Count and time the VM boot steps of vm/startup.sh in the sandbox (tests/vm/sandbox.py).

Runs the REAL script under bash against the local fakes: a first boot (blank
disk image: mkfs, pulls, three containers, admin key) and a warm boot (after a
simulated reboot: fsck + mount, nothing pulled or recreated), N times each, and
PRINTS figures: wall time, per-step time (from the script's own "step X: done
in N ms" lines), calls per tool/subcommand, HTTP requests per fake endpoint,
and the image pull intervals (overlapping intervals = pulls ran in parallel).
It asserts nothing about time.

    python benchmarks/boot_bench.py [--runs N] [--pull-delay SECONDS]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "vm"))

from sandbox import Sandbox  # noqa: E402

STEP = re.compile(r"step ([a-z-]+): done in (\d+) ms")


def one_run(sb: Sandbox, mode: str = "boot") -> dict:
    sb.clear_calls()
    t0 = time.perf_counter()
    r = sb.run(mode)
    wall = time.perf_counter() - t0
    if r.rc != 0:
        raise SystemExit(f"boot failed (rc {r.rc}):\n{r.stderr}")
    steps = {m.group(1): int(m.group(2)) for m in STEP.finditer(r.stderr)}
    counts: Counter[str] = Counter()
    for c in sb.calls():
        sub = c["argv"][0] if c["tool"] == "docker" and c["argv"] else ""
        counts[f"{c['tool']} {sub}".strip()] += 1
    http = Counter()
    http["metadata"] = len(sb.metadata.requests)
    http["secretmanager"] = sum(1 for q in sb.apis.requests if "/secrets/" in q["path"])
    http["sqladmin"] = sum(1 for q in sb.apis.requests if "/instances/" in q["path"])
    http["health polls"] = len(sb.health.requests)
    pulls = [(c["argv"][-1], c["t0"], c["t1"]) for c in sb.docker("pull")]
    return {"wall": wall, "steps": steps, "counts": counts, "http": http, "pulls": pulls}


def summarize(title: str, runs: list[dict]) -> None:
    walls = [r["wall"] * 1000 for r in runs]
    print(f"\n== {title}: {len(runs)} runs ==")
    print(f"wall time ms: median {statistics.median(walls):.0f}  min {min(walls):.0f}  max {max(walls):.0f}")
    steps: dict[str, list[int]] = defaultdict(list)
    for r in runs:
        for k, v in r["steps"].items():
            steps[k].append(v)
    print("step timings ms (median / max):")
    for k, v in steps.items():
        print(f"  {k:<16} {statistics.median(v):>7.0f} / {max(v):.0f}")
    print("calls per run (first run):")
    for k, v in sorted(runs[0]["counts"].items()):
        print(f"  {k:<22} {v}")
    print("HTTP requests per run (first run):")
    for k, v in runs[0]["http"].items():
        print(f"  {k:<22} {v}")
    pulls = runs[0]["pulls"]
    if pulls:
        base = min(p[1] for p in pulls)
        print("image pulls (first run; ms from first pull start):")
        for img, a, b in sorted(pulls, key=lambda p: p[1]):
            print(f"  {(a - base) * 1000:>7.0f} -> {(b - base) * 1000:>7.0f}  {img}")
        overlap = max(p[1] for p in pulls) < min(p[2] for p in pulls)
        serial = sum(b - a for _, a, b in pulls)
        span = max(p[2] for p in pulls) - base
        print(f"  all pull intervals overlap: {overlap}; span {span * 1000:.0f} ms vs {serial * 1000:.0f} ms if serial")
    else:
        print("image pulls: none (all images present)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pull-delay", type=float, default=0.5, help="simulated registry time per pull (s)")
    args = ap.parse_args()

    first, warm, rerun = [], [], []
    with tempfile.TemporaryDirectory(prefix="boot-bench-") as d:
        for i in range(args.runs):
            sb = Sandbox(Path(d) / f"run{i}")
            try:
                sb.set_docker(pull_delay=args.pull_delay)
                first.append(one_run(sb))
                sb.reboot()
                warm.append(one_run(sb))
                rerun.append(one_run(sb, "reconcile"))
            finally:
                sb.close()
    summarize("first boot (blank disk, images pulled)", first)
    summarize("warm boot (after reboot: fsck + mount, units reinstalled and started, nothing pulled)", warm)
    summarize("reconcile on a running VM (what the watcher runs; no change)", rerun)


if __name__ == "__main__":
    main()
