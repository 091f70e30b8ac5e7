"""Settings changes: only containers whose spec changed are recreated; the watcher applies them."""

from __future__ import annotations


import pytest
from sandbox import SHA, wait_for


def test_backend_env_change_recreates_only_backend(sandbox, booted):
    sandbox.clear_calls()  # the first boot's records
    old_ids = {n: c["id"] for n, c in sandbox.docker_state()["containers"].items()}
    sandbox.backend_env["RUST_LOG"] = "debug"
    sandbox.publish()
    r = sandbox.run("reconcile")
    assert r.rc == 0, r.stderr
    assert sandbox.runs() == ["convex-backend"]
    stops = [c["argv"] for c in sandbox.docker("stop")]
    assert stops == [["stop", "convex-backend"]]  # SIGINT via the container's --stop-signal
    ids = {n: c["id"] for n, c in sandbox.docker_state()["containers"].items()}
    assert ids["cloudsql-proxy"] == old_ids["cloudsql-proxy"]
    assert ids["convex-dashboard"] == old_ids["convex-dashboard"]
    assert ids["convex-backend"] != old_ids["convex-backend"]
    assert sandbox.calls("mount") == [] and sandbox.calls("systemd-run") == []
    assert "changed: convex-backend" in r.stderr


def test_proxy_args_change_recreates_only_proxy(sandbox, booted):
    sandbox.clear_calls()  # the first boot's records
    sandbox.config["PROXY_ARGS"] = sandbox.config["PROXY_ARGS"].replace("--structured-logs", "--debug-logs")
    sandbox.publish()
    assert sandbox.run("reconcile").rc == 0
    # The backend Requires= the proxy: systemd restarts it with an explicitly restarted proxy. When
    # that is before the new proxy listens, the backend exits (connection refused) and is started
    # again once the script has waited for the proxy's readiness; the dashboard is left alone.
    runs = sandbox.runs()
    assert runs[0] == "cloudsql-proxy" and set(runs[1:]) == {"convex-backend"}, runs


@pytest.mark.parametrize("damage", [b"\n\n", b"\0"], ids=["trailing-newlines", "nul"])
def test_an_edited_unit_file_is_put_back_and_restarted(sandbox, booted, damage):
    """The run compares each installed unit byte for byte with what it renders: trailing newlines
    or a NUL added by hand count as a change, as they did when the files were compared by sha256."""
    unit = sandbox.unit_dir / "convex-dashboard.service"
    good = unit.read_bytes()
    unit.write_bytes(good + damage)
    sandbox.clear_calls()
    assert sandbox.run("reconcile").rc == 0
    assert unit.read_bytes() == good
    assert sandbox.runs() == ["convex-dashboard"]


def test_instance_secret_rotation_recreates_backend(sandbox, booted):
    from sandbox import INSTANCE_SECRET_ID

    sandbox.clear_calls()  # the first boot's records
    sandbox.apis.secrets[INSTANCE_SECRET_ID].append(b"f" * 64)
    assert sandbox.run("reconcile").rc == 0
    assert sandbox.runs() == ["convex-backend"]


def test_image_upgrade_pulls_and_recreates_backend_and_dashboard(sandbox, booted):
    sandbox.clear_calls()  # the first boot's records
    new = "0" * 40
    sandbox.config["BACKEND_IMAGE"] = sandbox.config["BACKEND_IMAGE"].replace(SHA, new)
    sandbox.config["DASHBOARD_IMAGE"] = sandbox.config["DASHBOARD_IMAGE"].replace(SHA, new)
    sandbox.publish()
    assert sandbox.run("reconcile").rc == 0
    assert {c["argv"][-1].split(":")[-1] for c in sandbox.docker("pull")} == {new}
    assert sandbox.runs() == ["convex-backend", "convex-dashboard"]


def test_dashboard_disabled_removes_only_dashboard(sandbox, booted):
    sandbox.clear_calls()  # the first boot's records
    sandbox.config["DASHBOARD_ENABLED"] = "false"
    sandbox.publish()
    r = sandbox.run("reconcile")
    assert r.rc == 0, r.stderr
    assert sandbox.runs() == []
    assert "convex-dashboard" not in sandbox.docker_state()["containers"]
    assert set(sandbox.docker_state()["containers"]) == {"cloudsql-proxy", "convex-backend"}


def test_unknown_config_key_is_ignored_with_warning(sandbox):
    sandbox.config["SOMETHING_NEW"] = "x"
    sandbox.publish()
    r = sandbox.run()
    assert r.rc == 0 and "ignoring unknown convex-gcp-config key SOMETHING_NEW" in r.stderr


def _polls(sb) -> list:
    return [q for q in sb.metadata.requests if "wait_for_change=true" in q["path"]]


def test_watcher_applies_metadata_change(sandbox, booted):
    sandbox.clear_calls()  # the first boot's records
    # A long timeout_sec: if the long-poll did not return at once on change,
    # nothing would happen within the wait below.
    sandbox.extra_env["CONVEX_GCP_WATCH_TIMEOUT"] = "3600"  # 180 s in the sandbox: longer than any wait_for
    watcher = sandbox.popen("watch")
    try:
        # Wait until the watcher is parked in its long-poll, with the boot's etag.
        assert wait_for(lambda: any("wait_for_change=true" in q["path"] for q in sandbox.metadata.requests))
        assert sandbox.runs() == []
        parked = len(_polls(sandbox))  # the poll the change will end
        sandbox.backend_env["RUST_LOG"] = "warn"
        sandbox.publish()
        assert wait_for(lambda: sandbox.runs() == ["convex-backend"]), "watcher did not reconcile"
        # and it settles: back in its next long-poll (no fixed sleep) with nothing else recreated.
        assert wait_for(lambda: len(_polls(sandbox)) > parked)
        assert sandbox.runs() == ["convex-backend"]
        polls = [q["path"] for q in sandbox.metadata.requests if "wait_for_change=true" in q["path"]]
        assert all("last_etag=" in p and "recursive=true" in p for p in polls)
    finally:
        out = sandbox.stop(watcher)
    assert "metadata changed" in out
    assert "restarting the watcher" not in out  # the script it fetched is the one it runs
    env = dict(e.split("=", 1) for e in sandbox.docker_state()["containers"]["convex-backend"]["env"])
    assert env["RUST_LOG"] == "warn"


def test_watcher_retries_unfinished_run(sandbox):
    sandbox.database_down()
    assert sandbox.run().rc == 75
    sandbox.clear_calls()
    watcher = sandbox.popen("watch")
    try:
        sandbox.health.db_up = True
        # CONVEX_GCP_PENDING_RETRY_MS=100: the watcher retries without any metadata change.
        assert wait_for(lambda: not (sandbox.run_dir / "pending").exists(), timeout=40)
        assert "convex-dashboard" in sandbox.runs()
        assert {c["status"] for c in sandbox.docker_state()["containers"].values()} == {"running"}
    finally:
        sandbox.stop(watcher)


def test_watcher_backs_off_while_the_run_keeps_failing(sandbox):
    """Each failed retry doubles the wait, counted from the start of the last run, whatever the
    long-poll's timeout_sec (1 s, 50 ms in the sandbox), and the log names the wait it will keep.
    (Up to the outage cap while nothing serves, see test_faults.py: raised here to see the doubling.)"""
    sandbox.database_down()
    sandbox.extra_env.update(CONVEX_GCP_PENDING_RETRY_MS="200", CONVEX_GCP_PROXY_WAIT_MS="100",
                             CONVEX_GCP_BACKEND_WAIT_MS="100", CONVEX_GCP_OUTAGE_RETRY_MS="100000")
    assert sandbox.run().rc == 75
    sandbox.clear_calls()
    watcher = sandbox.popen("watch")

    def runs() -> list[float]:
        return [q["t"] for q in sandbox.metadata.requests if q["path"].endswith("/startup-script")]

    try:
        assert wait_for(lambda: len(runs()) >= 3)
    finally:
        out = sandbox.stop(watcher)
    first, second, third = runs()[:3]
    assert second - first >= 0.4 and third - second >= 0.8, runs()
    assert out.index("retrying in 0.400 s") < out.index("retrying in 0.800 s")


def test_watcher_adopts_new_startup_script_but_not_a_broken_one(sandbox, booted):
    sandbox.clear_calls()  # the first boot's records
    installed = sandbox.run_dir / "startup.sh"
    watcher = sandbox.popen("watch")
    try:
        assert wait_for(lambda: any("wait_for_change=true" in q["path"] for q in sandbox.metadata.requests))
        before = len(_polls(sandbox))
        sandbox.script_suffix = "\n# release 2\n"
        sandbox.publish()
        assert wait_for(lambda: "# release 2" in installed.read_text()), "new script not adopted"
        assert wait_for(lambda: len(_polls(sandbox)) > before)  # the new version is parked in its long-poll
        fetched = len([q for q in sandbox.metadata.requests if q["path"].endswith("/startup-script")])
        parked = len(_polls(sandbox))
        sandbox.script_suffix = "\nif then fi\n"  # syntax error
        sandbox.publish()
        # The watcher fetched the broken script, ran it (it fails), and is back in a new long-poll.
        assert wait_for(lambda: len([q for q in sandbox.metadata.requests if q["path"].endswith("/startup-script")]) > fetched)
        assert wait_for(lambda: len(_polls(sandbox)) > parked)
        assert "if then fi" not in installed.read_text()
        assert watcher.poll() is None  # still watching with the last good version
        assert sandbox.runs() == []  # nothing recreated by either change
    finally:
        out = sandbox.stop(watcher)
    assert "restarting the watcher with the new version" in out
