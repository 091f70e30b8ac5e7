"""The autohealing health endpoint (vm/health/): its answers in each VM state, its systemd units, and the
group's autohealing (tests/vm/autohealer.py) driven by it through a first boot and a migration longer than
every autohealing delay."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from autohealer import Autohealer  # noqa: E402

from components.convex_vm import (  # noqa: E402
    AUTOHEAL_INITIAL_DELAY_SEC, CHECK_INTERVAL_SEC, CHECK_TIMEOUT_SEC, HEALTHY_THRESHOLD, UNHEALTHY_THRESHOLD,
)
from convex_gcp import runtime  # noqa: E402

HEALTH = runtime.HEALTH_DIR / "health.sh"
REQUEST = "GET /health HTTP/1.1\r\nHost: 10.20.0.2:3290\r\nUser-Agent: GoogleHC/1.0\r\n\r\n"


def probe(sb) -> tuple[int, str]:
    """One health check: the request on stdin, the answer on stdout, as the socket unit wires them."""
    # Bytes, not text: HTTP's CRLFs must reach the script and come back as they are.
    p = subprocess.run(["bash", str(HEALTH)], input=REQUEST.encode(), env=sb.env(), capture_output=True,
                       timeout=CHECK_TIMEOUT_SEC)
    assert p.returncode == 0, p.stderr
    head, _, body = p.stdout.decode().partition("\r\n\r\n")
    status = int(head.split()[1])
    length = int(next(line.split(":", 1)[1] for line in head.split("\r\n") if line.lower().startswith("content-length")))
    assert len(body.encode()) == length
    return status, body.strip()


def autohealer() -> Autohealer:
    return Autohealer(AUTOHEAL_INITIAL_DELAY_SEC, CHECK_INTERVAL_SEC, UNHEALTHY_THRESHOLD, HEALTHY_THRESHOLD)


def test_serving(booted, sandbox):
    assert probe(sandbox) == (200, "serving")


def test_a_running_backend_that_does_not_answer_yet_is_starting(booted, sandbox):
    sandbox.set_docker(loading=True)
    status, body = probe(sandbox)
    assert status == 200 and body.startswith("starting: convex-backend.service is active")


def test_a_boot_in_progress_is_booting(booted, sandbox):
    sandbox.systemctl("stop", "convex-backend")
    # vm/startup.sh holds RUN_DIR/lock for its whole run (flock -w ... 9).
    with open(sandbox.run_dir / "lock", "a") as held:
        subprocess.run(["flock", "-n", str(sandbox.run_dir / "lock"), "true"], check=True)
        fcntl.flock(held, fcntl.LOCK_EX)
        status, body = probe(sandbox)
    assert status == 200 and body.startswith("booting")
    assert probe(sandbox)[0] == 503  # released: nothing runs


def test_nothing_running_and_nothing_trying_is_down(booted, sandbox):
    sandbox.systemctl("stop", "convex-backend")
    status, body = probe(sandbox)
    assert status == 503 and body.startswith("down:") and "inactive" in body


def test_a_start_longer_than_every_autohealing_delay_is_not_interrupted(booted, sandbox):
    healer = autohealer()
    # /version silent (connecting, loading the database) twice as long as a VM that answered nothing would
    # survive, right after a recreation.
    loading = 2 * healer.grace_sec
    sandbox.set_docker(loading=True)

    def check(t: int) -> bool:
        if t >= loading and sandbox.docker_state().get("loading"):
            sandbox.set_docker(loading=False)  # Convex binds /version
        return probe(sandbox)[0] == 200

    assert healer.run(check, until=loading + 10 * CHECK_INTERVAL_SEC) == []
    assert healer.probes > (loading - AUTOHEAL_INITIAL_DELAY_SEC) // CHECK_INTERVAL_SEC
    assert probe(sandbox) == (200, "serving")


def test_a_migration_longer_than_every_autohealing_delay_is_not_interrupted(booted, sandbox):
    # A new backend image 120 migrations ahead, each taking real time in the sandbox's Convex (fakes/convex.py
    # prints the pinned backend's migration lines). The probes run while the migration does; every probe is
    # a simulated check interval, so they cover far more than the initial delay plus the unhealthy threshold.
    import time

    from test_upgrade import upgrade

    healer = autohealer()
    conv = sandbox.docker_state().get("convex", {})
    sandbox.set_docker(convex={**conv, "migration_s": 0.15})
    upgrade(sandbox, version=128 + 120)
    r = sandbox.run("reconcile")
    assert r.rc == 0, r.stderr
    backend = sandbox.docker_state()["containers"]["convex-backend"]
    complete_at = next(t for t, text, _ in backend["events"] if "Migration complete" in text)
    answers = []

    def check(t: int) -> bool:
        status, body = probe(sandbox)
        answers.append((time.time() < complete_at, body))
        return status == 200

    # One continuous run of the autohealer, well past the initial delay plus the unhealthy threshold.
    span = healer.grace_sec + 20 * CHECK_INTERVAL_SEC
    assert healer.run(check, until=span) == []
    # Every probe fell inside the running migration, and Convex served throughout it.
    assert all(during for during, _ in answers), "the migration ended before the probes did: raise migration_s"
    assert {body for _, body in answers} == {"serving"} and len(answers) * CHECK_INTERVAL_SEC >= span
    assert healer.repairs == []


def test_a_dead_backend_is_repaired_after_the_delays(booted, sandbox):
    # The counter-check: the same model and endpoint do recreate a VM on which nothing runs Convex.
    healer = autohealer()
    sandbox.systemctl("stop", "convex-backend")
    repairs = healer.run(lambda t: probe(sandbox)[0] == 200, until=healer.grace_sec + CHECK_INTERVAL_SEC)
    assert repairs == [AUTOHEAL_INITIAL_DELAY_SEC + (UNHEALTHY_THRESHOLD - 1) * CHECK_INTERVAL_SEC]


def test_a_first_boot_is_covered_by_the_lock_not_by_the_delay(sandbox):
    # A first boot is one long convex-gcp run (format, pulls, waiting for Cloud SQL): healthy throughout,
    # however long it takes, even with no initial delay at all.
    healer = Autohealer(0, CHECK_INTERVAL_SEC, UNHEALTHY_THRESHOLD, HEALTHY_THRESHOLD)
    sandbox.database_down()
    sandbox.extra_env.update(CONVEX_GCP_PROXY_WAIT_MS="60000", CONVEX_GCP_BACKEND_WAIT_MS="60000")
    proc = sandbox.popen("boot")
    try:
        import sandbox as sbmod

        assert sbmod.wait_for(lambda: probe(sandbox)[1].startswith("booting"), timeout=60)
        assert healer.run(lambda t: probe(sandbox)[0] == 200, until=(UNHEALTHY_THRESHOLD + 2) * CHECK_INTERVAL_SEC) == []
    finally:
        sandbox.stop(proc)


def test_the_units_are_valid_systemd_units(tmp_path):
    # systemd-analyze verify on the files cloud-init writes (the socket and its per-connection service).
    config = yaml.safe_load(runtime.health_cloud_config().split("\n", 1)[1])
    files = {Path(f["path"]).name: f for f in config["write_files"]}
    assert set(files) == {"convex-health.socket", "convex-health@.service", "health.sh"}
    assert files["health.sh"]["content"] == HEALTH.read_text() and files["health.sh"]["permissions"] == "0755"
    units = tmp_path / "units"
    units.mkdir()
    for name in ("convex-health.socket", "convex-health@.service"):
        (units / name).write_text(files[name]["content"].replace(runtime.HEALTH_SCRIPT, str(HEALTH)))
    assert f"ListenStream={runtime.HEALTH_PORT}" in files["convex-health.socket"]["content"]
    assert "Accept=yes" in files["convex-health.socket"]["content"]
    service = files["convex-health@.service"]["content"]
    assert "StandardInput=socket" in service and "StandardOutput=socket" in service and f"/bin/bash {runtime.HEALTH_SCRIPT}" in service
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is needed (apt-get install systemd)")
    p = subprocess.run(["systemd-analyze", "verify", str(units / "convex-health.socket")], capture_output=True, text=True,
                       env={"SYSTEMD_UNIT_PATH": f"{units}:", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    # Opened in COS's host firewall (it admits only SSH by default), then started.
    assert config["runcmd"][0] == f"iptables -w -C INPUT -p tcp --dport {runtime.HEALTH_PORT} -j ACCEPT 2>/dev/null || iptables -w -A INPUT -p tcp --dport {runtime.HEALTH_PORT} -j ACCEPT"
    assert config["runcmd"][1:] == ["systemctl daemon-reload", "systemctl start convex-health.socket"]
