"""How long a Convex upgrade leaves the API unavailable in the VM sandbox, next to the backend's own
start time, with the new image pulled ahead (issue 24; goal: no more than 1.2x the start time).

Runs the REAL vm/startup.sh reconcile (and the upgrade guard it starts) against the sandbox's fakes
(tests/vm/sandbox.py): the fake Convex takes --start seconds from its start to answering /version
(tests/vm/fakes/convex.py). A prober polls /version every 10 ms from the reconcile's start; the
unavailable time is from the first failed probe to the first answer after it. PRINTS figures, asserts
nothing.

    python benchmarks/upgrade_bench.py [--runs N] [--start SECONDS]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "vm"))

from sandbox import BACKEND_IMAGE, DASHBOARD_IMAGE, SHA, Sandbox  # noqa: E402


def probe(url: str, stop: threading.Event, log: list[tuple[float, bool]]) -> None:
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                ok = r.status == 200
        except OSError:
            ok = False
        log.append((time.monotonic(), ok))
        time.sleep(0.01)


def one(start_s: float, n: int) -> tuple[float, float, float]:
    sb = Sandbox(Path(tempfile.mkdtemp(prefix="upgrade-bench-", dir="/dev/shm")))
    try:
        sb.extra_env["CONVEX_GCP_BACKEND_WAIT_MS"] = str(int(start_s * 1000 * 20))
        st = sb.docker_state()
        sb.set_docker(convex={**st.get("convex", {}), "backend_start_s": start_s})
        assert sb.run().rc == 0
        sb.wait_units()
        new = f"{n:040d}"
        backend, dashboard = BACKEND_IMAGE.replace(SHA, new), DASHBOARD_IMAGE.replace(SHA, new)
        # Pulled ahead: the images are on the VM before the config names them.
        sb.set_docker(images={**sb.docker_state()["images"], backend: "sha256:" + "b" * 64, dashboard: "sha256:" + "d" * 64})
        sb.config["BACKEND_IMAGE"], sb.config["DASHBOARD_IMAGE"] = backend, dashboard
        sb.publish()
        log: list[tuple[float, bool]] = []
        stop = threading.Event()
        prober = threading.Thread(target=probe, args=(f"http://127.0.0.1:{sb.health.port}/version", stop, log))
        prober.start()
        t0 = time.monotonic()
        r = sb.run("reconcile")
        took = time.monotonic() - t0
        time.sleep(0.05)
        stop.set()
        prober.join()
        assert r.rc == 0, r.stderr
        down = [t for t, ok in log if not ok]
        if not down:
            return 0.0, start_s, took
        first_down = down[0]
        back = next(t for t, ok in log if ok and t > first_down)
        return back - first_down, start_s, took
    finally:
        sb.wait_units(30)
        sb.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--start", type=float, default=1.0, help="the fake backend's start time, seconds")
    args = parser.parse_args()
    results = [one(args.start, i + 1) for i in range(args.runs)]
    unavailable = [r[0] for r in results]
    print(f"backend start time (fake Convex, connect + bind): {args.start:.3f} s")
    print(f"unavailable during the upgrade, {args.runs} runs: median {statistics.median(unavailable):.3f} s, "
          f"min {min(unavailable):.3f} s, max {max(unavailable):.3f} s")
    print(f"ratio to the start time: median {statistics.median(unavailable) / args.start:.2f}x, max {max(unavailable) / args.start:.2f}x (goal <= 1.2x)")
    print(f"reconcile wall time: median {statistics.median(r[2] for r in results):.3f} s")


if __name__ == "__main__":
    main()
