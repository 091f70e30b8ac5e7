"""The acceptance run's VM group checks on a real project (tools/acceptance.py, gcp): an image bump and an
autoheal, each a recreation of the one VM by its managed instance group (docs/updates.md). For each it records
the seconds `/version` went unanswered and proves what only a real project shows:

- the VM was recreated (a new `creationTimestamp`) under the same name, with the same internal IP and the same
  data disk attached (its source), and it serves again;
- image bump: the stack is deployed from an older COS build, then `vm.image` goes back to the pinned one and
  `pulumi up` applies the new template; the group replaces the VM by its update policy (RECREATE, max surge 0);
- autoheal: `convex-backend.service` is stopped on the VM; vm/health/health.sh then answers 503 (nothing runs
  Convex, no run in progress), and after the initial delay and the unhealthy threshold the group recreates it.

The sampling and the comparison are plain functions (tests/test_recreation_check.py); the rest calls gcloud.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Optional


def unanswered_span(samples: list[tuple[float, bool]]) -> Optional[float]:
    """Seconds from the first failed `/version` to the first answer after it; None when it never failed. A run
    that ends unanswered counts to its last sample."""
    first_fail = next((t for t, ok in samples if not ok), None)
    if first_fail is None:
        return None
    back = next((t for t, ok in samples if ok and t > first_fail), None)
    return round((back if back is not None else samples[-1][0]) - first_fail, 1)


def recreated(before: dict[str, Any], after: dict[str, Any], data_disk: str, internal_ip: str) -> list[str]:
    """What is wrong with `after` (gcloud compute instances describe --format=json) as a recreation of `before`."""
    problems = []
    if after.get("name") != before.get("name"):
        problems.append(f"name {after.get('name')!r} is not {before.get('name')!r}")
    if after.get("creationTimestamp") == before.get("creationTimestamp"):
        problems.append("not recreated (same creationTimestamp)")
    ips = [nic.get("networkIP") for nic in after.get("networkInterfaces") or []]
    if ips[:1] != [internal_ip]:
        problems.append(f"internal IP {ips[:1]} is not {internal_ip}")
    sources = [str(d.get("source", "")) for d in after.get("disks") or [] if not d.get("boot")]
    if not any(s.endswith(f"/disks/{data_disk}") for s in sources):
        problems.append(f"data disk {data_disk} not attached (non-boot disks: {sources})")
    if after.get("status") != "RUNNING":
        problems.append(f"status {after.get('status')}")
    return problems


@dataclass
class Sampler:
    """Polls `/version` every `interval` seconds in a thread while a change runs."""

    url: str
    interval: float = 2.0
    samples: list[tuple[float, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url.rstrip("/") + "/version", timeout=5) as answer:
                    ok = answer.status == 200
            except Exception:
                ok = False
            self.samples.append((round(time.monotonic() - self._start, 1), ok))
            self._stop.wait(self.interval)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def describe(vm: str, zone: str, project: str) -> dict[str, Any]:
    result = subprocess.run(["gcloud", "compute", "instances", "describe", vm, f"--zone={zone}", f"--project={project}", "--format=json"],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"gcloud compute instances describe {vm}: {result.stderr.strip()[-500:]}")
    return json.loads(result.stdout)


def wait_for(condition: Callable[[], bool], timeout: float, poll: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return False


def previous_cos_image(family: str = "cos-121-lts") -> str:
    """A real COS build older than the pinned line, to deploy from before the bump (empty when gcloud cannot say)."""
    try:
        result = subprocess.run(["gcloud", "compute", "images", "describe-from-family", family, "--project=cos-cloud", "--format=value(name)"],
                                capture_output=True, text=True, timeout=120)
    except OSError:
        return ""
    return f"cos-cloud/{result.stdout.strip()}" if result.returncode == 0 and result.stdout.strip() else ""
