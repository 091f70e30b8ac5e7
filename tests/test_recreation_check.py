"""The acceptance run's recreation checks (tools/recreation_check.py): the pure parts. The gcloud calls and the
real recreations run only on a real project (tools.acceptance gcp)."""

from __future__ import annotations

from tools.recreation_check import recreated, unanswered_span

BEFORE = {"name": "convex-acc-vm", "creationTimestamp": "2026-12-07T04:00:00.000-08:00", "status": "RUNNING",
          "networkInterfaces": [{"networkIP": "10.20.0.2"}],
          "disks": [{"boot": True, "source": "https://www.googleapis.com/compute/v1/projects/p/zones/z/disks/convex-acc-vm"},
                    {"boot": False, "deviceName": "convex-data", "source": "https://www.googleapis.com/compute/v1/projects/p/zones/z/disks/convex-acc-data"}]}


def test_the_unanswered_span_runs_from_the_first_failure_to_the_next_answer():
    assert unanswered_span([(0, True), (2, True)]) is None
    assert unanswered_span([(0, True), (2, False), (4, False), (6.5, True), (8, False)]) == 4.5
    assert unanswered_span([(0, True), (2, False), (9, False)]) == 7  # never back: up to the last sample


def test_a_recreation_keeps_name_ip_and_disk():
    after = {**BEFORE, "creationTimestamp": "2026-12-07T04:09:00.000-08:00"}
    assert recreated(BEFORE, after, "convex-acc-data", "10.20.0.2") == []
    assert recreated(BEFORE, BEFORE, "convex-acc-data", "10.20.0.2") == ["not recreated (same creationTimestamp)"]
    moved = {**after, "networkInterfaces": [{"networkIP": "10.20.0.9"}], "disks": BEFORE["disks"][:1], "status": "STAGING"}
    problems = recreated(BEFORE, moved, "convex-acc-data", "10.20.0.2")
    assert len(problems) == 3 and "internal IP" in problems[0] and "data disk" in problems[1] and "STAGING" in problems[2]
