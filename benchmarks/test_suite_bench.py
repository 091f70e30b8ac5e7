"""Time the whole test suite against one offline plan of the dev stack, and print the ratio.

One offline plan is `python -m tools.plan dev` in a fresh interpreter (what a reviewer runs); the
suite is the README's command, `pytest -q`, as it stands (parallel by default). The goal is a suite
of at most 15 such plans. It asserts nothing: on a shared or busy machine both figures move, so
read the ratio next to the machine's load.

    python benchmarks/test_suite_bench.py [--plans N] [--suites N] [-- extra pytest args]
    python benchmarks/test_suite_bench.py -- -n 0          # the same suite in one process
    python benchmarks/test_suite_bench.py --tail 40 -- --durations=30   # and where the time goes
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL = 15


def timed(command: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    return time.perf_counter() - start, result


def children_cpu() -> float:
    """CPU seconds of finished child processes and the descendants they waited for (a PostgreSQL
    server, which pg_ctl detaches, is not among them: ~1 s of the suite's CPU)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", type=int, default=3, help="offline plans to time before each suite run and after the last (the median of all is used)")
    parser.add_argument("--suites", type=int, default=1, help="suite runs to time (median is used)")
    parser.add_argument("--tail", type=int, default=0, help="also print the last N lines of pytest's output (e.g. with -- --durations=30)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")
    options = parser.parse_args()

    def time_plans() -> list[float] | None:
        out = []
        for _ in range(options.plans):
            seconds, result = timed([sys.executable, "-m", "tools.plan", "dev"])
            if result.returncode != 0:
                print(result.stderr[-3000:], file=sys.stderr)
                return None
            out.append(seconds)
        return out

    # Plans are timed before every suite run and after the last one: on a shared machine one plan
    # moved between 1.4 and 1.9 s within minutes, so the ratio compares figures taken together.
    plans: list[float] = []
    suites = []
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options.pytest_args]
    for round_ in range(options.suites + 1):
        timed_plans = time_plans()
        if timed_plans is None:
            return 1
        plans += timed_plans
        print(f"offline plan of dev: {' '.join(f'{t:.2f}' for t in timed_plans)} s")
        if round_ == options.suites:
            break
        cpu_before = children_cpu()
        seconds, result = timed(command)
        cpu = children_cpu() - cpu_before
        summary = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
        # Idle core-seconds: what the cores could have done in that wall time and did not (waits in
        # tests, hand-offs between processes, the last tests' tail).
        idle = max(0.0, seconds * (os.cpu_count() or 1) - cpu)
        print(f"suite: {seconds:.1f} s wall, {cpu:.1f} s CPU, {idle:.1f} idle core-seconds  [{summary}]")
        if options.tail:
            print("\n".join(result.stdout.rstrip().splitlines()[-options.tail:]))
        if result.returncode != 0:
            print(result.stdout[-3000:], file=sys.stderr)
        suites.append(seconds)
    plan = statistics.median(plans)
    suite = statistics.median(suites)
    print(f"offline plan of dev: median {plan:.2f} s over {len(plans)} (min {min(plans):.2f}, max {max(plans):.2f})")

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"cores: {os.cpu_count()}  load average (1 min) after the run: {load:.1f}")
    print(f"suite / offline plan = {suite:.1f} s / {plan:.2f} s = {suite / plan:.1f}x  (goal: at most {GOAL}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
