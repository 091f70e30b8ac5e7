"""Compute Engine's autohealing, as a model the sandbox drives with the REAL health endpoint (vm/health/).

What it copies (and nothing more):
- A managed instance group waits `initial_delay_sec` after it creates or recreates a VM before it applies
  autohealing to it (terraform-provider-google website/docs/r/compute_instance_group_manager.html.markdown,
  `auto_healing_policies.initial_delay_sec`: "The number of seconds that the managed instance group waits
  before it applies autohealing policies to new instances or recently recreated instances").
- A health check probes every `check_interval_sec`; a probe that gets no 2xx within `timeout_sec` fails, and a
  VM becomes UNHEALTHY after `unhealthy_threshold` consecutive failures (HEALTHY again after
  `healthy_threshold` successes) (Compute Engine API HealthCheck: checkIntervalSec, timeoutSec,
  unhealthyThreshold, healthyThreshold).
- An UNHEALTHY VM is repaired: recreated from the template, which starts a new initial delay.

Time is simulated: each probe is one real call of vm/health/health.sh against the sandbox's state at that
simulated second, so a migration of an hour costs a few hundred calls, not an hour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Autohealer:
    initial_delay_sec: int
    check_interval_sec: int
    unhealthy_threshold: int
    healthy_threshold: int
    repairs: list[int] = field(default_factory=list)
    probes: int = 0

    @property
    def grace_sec(self) -> int:
        """The longest a VM that answers nothing at all survives after its creation."""
        return self.initial_delay_sec + self.unhealthy_threshold * self.check_interval_sec

    def run(self, probe: Callable[[int], bool], until: int, created_at: int = 0) -> list[int]:
        """Probe from `created_at` to `until` (simulated seconds); return the seconds at which the group
        recreated the VM. `probe(t)` is True when the health check got a 2xx at second t."""
        failures = 0
        started = created_at
        t = created_at
        while t < until:
            ok = probe(t)
            self.probes += 1
            if t - started < self.initial_delay_sec:
                failures = 0  # results are not acted upon during the initial delay
            elif ok:
                failures = 0
            else:
                failures += 1
                if failures >= self.unhealthy_threshold:
                    self.repairs.append(t)
                    failures, started = 0, t
            t += self.check_interval_sec
        return self.repairs
