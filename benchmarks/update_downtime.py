"""Expected downtime of each kind of update, measured in the VM sandbox (tests/vm/sandbox.py): seconds of an
unanswered `/version`, next to the backend's own start time (its container's start until it answers).

Runs the REAL vm/startup.sh (and vm/health/health.sh) against the local fakes, N times per kind, and PRINTS
figures; it asserts nothing about time. A thread polls the sandbox's /version every 5 ms during the change.

- config change: the backend's env changes in metadata; the group REFRESHes the VM's metadata and the watcher
  runs `startup.sh reconcile`, which restarts only the backend.
- Convex image bump: a new backend (and dashboard) digest in metadata: the same path, with a pull ahead of
  the stop (vm/convex-upgrade.sh).
- COS bump: a new template; the group RECREATEs the VM (max surge 0): the old VM stops, a new one boots on the
  kept disk (tests/vm/recreation.py: no state of the old boot disk, every image pulled again).
- autoheal: the same recreation, after the health check found nothing running Convex: plus the detection time
  of components/convex_vm.py (unhealthy threshold × check interval), which the sandbox does not wait out.

What the sandbox cannot show is printed beside it (Google's side: deleting and creating the VM, COS booting,
real pulls, Convex's real start), as the figures docs/updates.md names; tools.acceptance gcp measures the real
thing on a project.

    python benchmarks/update_downtime.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "vm"))
sys.path.insert(0, str(HERE.parent))

from recreation import recreate  # noqa: E402
from sandbox import BACKEND_IMAGE, DASHBOARD_IMAGE, SHA, Sandbox  # noqa: E402

from components.convex_vm import AUTOHEAL_INITIAL_DELAY_SEC, CHECK_INTERVAL_SEC, UNHEALTHY_THRESHOLD  # noqa: E402

# Not in the sandbox (seconds, typical; docs/updates.md "What each change costs"): estimates, not measurements.
OUTSIDE = {
    "config change": "none: the VM keeps running",
    "Convex image bump": "the image pull (about 10-60 s, ahead of the stop) and Convex's real start (seconds, longer on a large database)",
    "COS bump": "Compute Engine deleting and creating the VM (about 30-90 s), COS booting (about 20-40 s), cold pulls (about 30-60 s), Convex's real start",
    "autoheal": f"the same as a COS bump, plus detection: {UNHEALTHY_THRESHOLD} failed probes {CHECK_INTERVAL_SEC} s apart = {UNHEALTHY_THRESHOLD * CHECK_INTERVAL_SEC} s after the VM stopped serving (never within {AUTOHEAL_INITIAL_DELAY_SEC} s of its creation)",
}


class Poller:
    def __init__(self, url: str, interval: float = 0.005):
        self.url, self.interval, self.samples = url, interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=1) as answer:
                    answer.read()
                    ok = answer.status == 200
            except urllib.error.HTTPError as error:
                error.read()  # an unread 503 body makes the fake server's next read a reset
                ok = False
            except Exception:
                ok = False
            self.samples.append((time.monotonic(), ok))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def unanswered(self) -> float:
        """Seconds from the first failed /version to the first answer after it (0 when it never failed)."""
        first = next((t for t, ok in self.samples if not ok), None)
        if first is None:
            return 0.0
        back = next((t for t, ok in self.samples if ok and t > first), self.samples[-1][0])
        return back - first


def backend_start(sb: Sandbox) -> float:
    """The running backend's own start: its container's start until it answers (tests/vm/fakes/convex.py)."""
    c = sb.docker_state()["containers"]["convex-backend"]
    return (c["ready_at"] - c["events"][0][0]) if c.get("ready_at") and c.get("events") else float("nan")


def booted(tmp: Path) -> Sandbox:
    sb = Sandbox(tmp)
    r = sb.run()
    if r.rc != 0:
        raise SystemExit(f"first boot failed:\n{r.stderr}")
    return sb


def config_change(sb: Sandbox) -> None:
    sb.backend_env["RUST_LOG"] = "debug"
    sb.publish()
    _run(sb, "reconcile")


def image_bump(sb: Sandbox) -> None:
    new = "1" * 40
    sb.config["BACKEND_IMAGE"] = BACKEND_IMAGE.replace(SHA, new)
    sb.config["DASHBOARD_IMAGE"] = DASHBOARD_IMAGE.replace(SHA, new)
    sb.publish()
    _run(sb, "reconcile")


def recreation(sb: Sandbox) -> None:
    for unit in ("convex-dashboard", "convex-backend", "cloudsql-proxy"):  # the old VM is deleted
        sb.systemctl("stop", unit)
    recreate(sb)
    _run(sb, "boot")


def _run(sb: Sandbox, mode: str) -> None:
    r = sb.run(mode)
    if r.rc != 0:
        raise SystemExit(f"{mode} failed:\n{r.stderr}")
    deadline = time.monotonic() + 30  # until the new backend answers (a run returns once it did, or not)
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(sb.env()["CONVEX_GCP_BACKEND_VERSION_URL"], timeout=1) as answer:
                answer.read()
                if answer.status == 200:
                    return
        except urllib.error.HTTPError as error:
            error.read()
        except Exception:
            pass
        time.sleep(0.005)
    raise SystemExit("the backend never answered again")


KINDS = {"config change": config_change, "Convex image bump": image_bump, "COS bump": recreation, "autoheal": recreation}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/update_downtime.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args(argv)
    results: dict[str, list[tuple[float, float]]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory(prefix="update-downtime-") as tmp:
        for n in range(options.runs):
            for i, (kind, change) in enumerate(KINDS.items()):
                sb = booted(Path(tmp) / f"{n}-{i}")
                try:
                    with Poller(sb.env()["CONVEX_GCP_BACKEND_VERSION_URL"]) as poller:
                        time.sleep(0.05)
                        change(sb)
                        time.sleep(0.05)
                    results[kind].append((poller.unanswered(), backend_start(sb)))
                finally:
                    sb.close()
    print(f"Update downtime in the VM sandbox ({options.runs} runs each; median, min-max; seconds)")
    print(f"{'change':<18} {'/version unanswered':>22} {'backend start':>14}   not in the sandbox")
    for kind, values in results.items():
        down = [v[0] for v in values]
        start = [v[1] for v in values]
        print(f"{kind:<18} {statistics.median(down):>8.3f} ({min(down):.3f}-{max(down):.3f}) {statistics.median(start):>14.3f}   {OUTSIDE[kind]}")
    print("\nThe sandbox's Convex starts in a scaled-down 0.15 s (tests/vm/fakes/convex.py); the unanswered time minus the "
          "backend's start is what vm/startup.sh itself costs on each path.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
