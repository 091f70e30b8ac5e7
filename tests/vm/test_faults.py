"""Faults: metadata server, Secret Manager, registry, database not ready, scopes/IAM."""

from __future__ import annotations

import pytest
from sandbox import ADMIN_KEY_SECRET_ID, BACKEND_IMAGE, INSTANCE_SECRET_ID, PROXY_IMAGE, SCRIPT, Sandbox


def test_metadata_outage_then_recovery(sandbox):
    sandbox.metadata.fail_next = 3
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    assert "retrying" in r.stderr and "metadata" in r.stderr


def test_the_values_are_always_read_after_the_etag_they_are_recorded_with(sandbox):
    """The attributes' ETag, recorded as applied, is read before the values in the same curl: a
    change made between the two is then seen by the watcher. When that first read fails (a 503
    here), the batch stops there (-f, --fail-early) and every value is read after the next one."""
    sandbox.metadata.fail_next = 1
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    reads = [q["path"].removeprefix("/computeMetadata/v1/") for q in sandbox.metadata.requests]
    etags = [i for i, p in enumerate(reads) if p.startswith("instance/attributes/?recursive=true")]
    values = [i for i, p in enumerate(reads) if p.startswith("instance/attributes/convex-")]
    assert len(etags) == 2 and etags[1] < min(values), reads
    assert (sandbox.run_dir / "applied-etag").read_text().strip() == sandbox.metadata.etag


@pytest.mark.parametrize("path", ["instance/service-accounts/default/token", "instance/service-accounts/default/scopes"])
def test_a_token_or_scopes_outage_is_left_to_the_step_that_needs_it(sandbox, path):
    """The metadata batch also reads the scopes and the token, but their failure must not end the
    boot before the config watcher has started (it retries an unfinished run): the batch gives them
    up, and their own steps read them again, as before the batch."""
    sandbox.metadata.unavailable_next[path] = 5  # the batch's 4 attempts, and the step's first
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    assert f"metadata {path}: attempt 4/4 failed (HTTP 503" in r.stderr
    if path.endswith("/scopes"):
        return  # the step's own read fails as the token's does below
    # For good: the boot fails at that step, with the watcher started to retry it.
    other = Sandbox(sandbox.tmp / "down")
    try:
        other.metadata.unavailable_next[path] = 1000
        r = other.run()
        assert r.rc == 1 and f"unreachable while reading {path}" in r.stderr, r.stderr
        assert other.calls("systemd-run"), "the watcher was not started"
    finally:
        other.close()


def test_a_metadata_read_cut_off_mid_batch_is_read_again(sandbox):
    """One curl reads the config, the env files and the units in turn (--fail-early); a connection cut
    before the backend unit's answer stops it there, and the next attempt reads only what is left."""
    unit = "instance/attributes/convex-gcp-unit-convex-backend"
    # Twice: curl itself resends a request once on a fresh connection when a reused one dies with
    # nothing received (libcurl lib/transfer.c Curl_retry_request, "Connection died, retrying a
    # fresh connect"), so only the second cut reaches the script. A curl without that resend fails
    # twice instead: three requests either way.
    sandbox.metadata.drop_next[unit] = 2
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    assert f"metadata {unit}: attempt 1/4 failed (HTTP 000, curl: (52) Empty reply from server" in r.stderr
    reads = [q["path"].removeprefix("/computeMetadata/v1/") for q in sandbox.metadata.requests]
    values = [p for p in reads if p.startswith("instance/attributes/convex-")]
    assert values.count(unit) == 3 and len(set(values)) == len(values) - 2, values
    assert values.index("instance/attributes/convex-gcp-unit-convex-dashboard") > values.index(unit) + 1
    assert (sandbox.run_dir / "units" / "convex-backend.meta").read_text() == sandbox.metadata.attributes[unit.rsplit("/", 1)[1]]


def test_a_metadata_value_cut_off_halfway_is_read_again_whole(sandbox):
    """curl's status line for a truncated answer says 200 and its exit says 18: the read counts as
    failed (a half unit file must never be installed), and the keys after it are read on the retry."""
    unit = "convex-gcp-unit-convex-backend"
    sandbox.metadata.truncate_next[unit] = 1
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    assert f"metadata instance/attributes/{unit}: attempt 1/4 failed (HTTP 000, curl: (18) transfer closed" in r.stderr
    assert (sandbox.run_dir / "units" / "convex-backend.meta").read_text() == sandbox.metadata.attributes[unit]
    reads = [q["path"].rsplit("/", 1)[1] for q in sandbox.metadata.requests if "/attributes/convex-" in q["path"]]
    assert reads.count(unit) == 2 and reads.count("convex-gcp-unit-convex-dashboard") == 1, reads


def test_each_metadata_key_keeps_its_own_retry_budget(sandbox):
    """Four keys that each fail once in the same boot (four failures, RETRY_ATTEMPTS=4 here) are each
    read again: the budget is per key, as it was when every key had a curl of its own."""
    keys = ["convex-backend-env", "convex-gcp-unit-cloudsql-proxy", "convex-gcp-unit-convex-backend", "convex-gcp-unit-convex-dashboard"]
    for key in keys:
        sandbox.metadata.drop_next[f"instance/attributes/{key}"] = 2  # one failure the script sees (curl resends once)
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    for key in keys:
        assert f"metadata instance/attributes/{key}: attempt 1/4 failed" in r.stderr
    assert "attempt 2/4" not in r.stderr


def test_metadata_down_gives_bounded_clear_error(sandbox):
    sandbox.metadata.down = True
    r = sandbox.run()
    assert r.rc == 1
    assert "ERROR: metadata server 127.0.0.1" in r.stderr and "unreachable" in r.stderr
    assert "CHECK:" in r.stderr
    assert sandbox.docker("run") == []
    # bounded: CONVEX_GCP_RETRY_ATTEMPTS=4 tries of the first request, then stop
    assert len(sandbox.metadata.requests) == 4


def test_every_metadata_request_carries_the_flavor_header(sandbox, booted):
    assert sandbox.metadata.requests and all(q["flavor"] == "Google" for q in sandbox.metadata.requests)


def test_secret_manager_403_is_a_clear_permission_error(sandbox):
    sandbox.apis.modes[INSTANCE_SECRET_ID] = "forbidden"
    r = sandbox.run()
    assert r.rc == 1
    assert "permission/scope problem" in r.stderr
    assert "roles/secretmanager.secretAccessor" in r.stderr and "cloud-platform" in r.stderr
    assert "PERMISSION_DENIED" in r.stderr
    accesses = [q for q in sandbox.apis.requests if q["path"] == f"/v1/{INSTANCE_SECRET_ID}/versions/latest:access"]
    assert len(accesses) == 1  # 403 is not retried: the read-ahead's answer is the step's
    assert sandbox.docker("run") == []
    for value in sandbox.secret_values():
        assert value not in r.output
    assert (sandbox.run_dir / "pending").exists()  # the watcher retries periodically


def test_secret_manager_scope_insufficient(sandbox):
    sandbox.metadata.scopes = ["https://www.googleapis.com/auth/sqlservice.admin"]
    sandbox.apis.modes[INSTANCE_SECRET_ID] = "scope"
    r = sandbox.run()
    assert r.rc == 1
    assert "ACCESS_TOKEN_SCOPE_INSUFFICIENT" in r.stderr
    assert "PREFLIGHT FAIL scopes-secretmanager" in r.stderr
    assert "PREFLIGHT PASS scopes-sqladmin" in r.stderr


def test_secret_missing_404(sandbox):
    sandbox.apis.modes[INSTANCE_SECRET_ID] = "missing"
    r = sandbox.run()
    assert r.rc == 1
    # No version: the VM would generate one, but the secret itself is missing.
    assert f"secret {INSTANCE_SECRET_ID} does not exist (addVersion HTTP 404)" in r.stderr
    assert "the Pulumi program creates the secret" in r.stderr
    assert not sandbox.docker("run")


def test_secret_manager_unavailable_then_recovers(sandbox):
    sandbox.apis.modes[INSTANCE_SECRET_ID] = "unavailable"
    r = sandbox.run()
    assert r.rc == 1 and "Secret Manager (secretmanager.googleapis.com) unreachable" in r.stderr
    assert "Cloud NAT" in r.stderr or "Private Google Access" in r.stderr
    # The read-ahead's 503 is dropped; then the step's own four attempts (CONVEX_GCP_RETRY_ATTEMPTS).
    assert len([q for q in sandbox.apis.requests if q["path"] == f"/v1/{INSTANCE_SECRET_ID}/versions/latest:access"]) == 1 + 4
    del sandbox.apis.modes[INSTANCE_SECRET_ID]
    assert sandbox.run().rc == 0


def test_admin_key_secret_not_writable(sandbox):
    sandbox.apis.modes[ADMIN_KEY_SECRET_ID] = "forbidden_add"
    r = sandbox.run()
    assert r.rc == 1
    assert "roles/secretmanager.secretVersionAdder" in r.stderr and ADMIN_KEY_SECRET_ID in r.stderr
    for value in sandbox.secret_values():
        assert value not in r.output


def test_registry_failure_then_recovery(sandbox):
    sandbox.set_docker(pull_failures={BACKEND_IMAGE: 2})
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    pulls = [c for c in sandbox.docker("pull") if c["argv"][-1] == BACKEND_IMAGE]
    assert len(pulls) == 3 and [p["rc"] for p in pulls] == [1, 1, 0]
    assert "retrying" in r.stderr


def test_registry_unreachable_names_nat(sandbox):
    sandbox.set_docker(pull_fail_always=[PROXY_IMAGE])
    r = sandbox.run()
    assert r.rc == 1
    assert "could not pull image(s)" in r.stderr and PROXY_IMAGE in r.stderr
    assert "Cloud NAT" in r.stderr and "ghcr.io" in r.stderr and "gcr.io" in r.stderr
    assert sandbox.docker("run") == []
    assert len([c for c in sandbox.docker("pull") if c["argv"][-1] == PROXY_IMAGE]) == 4


def test_cloud_sql_unreachable_is_reported_then_recovers(sandbox):
    """Readiness is not reachability: the proxy's --run-connection-test exits while the instance is
    unreachable, systemd keeps restarting it, and the boot says so instead of PASS."""
    sandbox.database_down()
    r = sandbox.run()
    assert r.rc == 75, r.stderr
    assert "PREFLIGHT FAIL cloud-sql: Cloud SQL unreachable: the proxy exited" in r.stderr
    assert "peering" in r.stderr and "roles/cloudsql.client" in r.stderr and "RUNNABLE" in r.stderr
    assert "PREFLIGHT FAIL backend-version" in r.stderr and "PASS cloud-sql" not in r.stderr
    assert sandbox.units()["cloudsql-proxy.service"]["n_restarts"] >= 1
    assert sandbox.apis.secrets[ADMIN_KEY_SECRET_ID] == []
    assert (sandbox.run_dir / "pending").exists()

    sandbox.database_up()
    sandbox.clear_calls()
    r = sandbox.run("reconcile")  # what the watcher does periodically while pending
    assert r.rc == 0, r.stderr
    assert "PREFLIGHT PASS cloud-sql" in r.stderr
    assert {n: c["status"] for n, c in sandbox.docker_state()["containers"].items()} == \
        dict.fromkeys(("cloudsql-proxy", "convex-backend", "convex-dashboard"), "running")
    assert len(sandbox.apis.secrets[ADMIN_KEY_SECRET_ID]) == 1
    assert not (sandbox.run_dir / "pending").exists()


def test_old_fake_behaviour_would_have_passed_readiness(sandbox):
    """Without --run-connection-test (what the old rendering ran) the proxy is 'ready' with the
    database unreachable, exactly like cloud-sql-proxy >= v2.11.1: readiness alone proves nothing."""
    sandbox.database_down()
    sandbox.config["PROXY_ARGS"] = sandbox.config["PROXY_ARGS"].replace(" --run-connection-test", "")
    sandbox.publish()
    r = sandbox.run()
    assert r.rc == 75
    assert sandbox.docker_state()["containers"]["cloudsql-proxy"]["status"] == "running"
    assert "PREFLIGHT FAIL backend-version" in r.stderr


def test_direct_mode_unreachable_sql_is_reported(sandbox):
    import socket

    sandbox.render(sandbox.settings.model_copy(update={"connection_mode": "plaintext"}))
    sandbox.publish()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there: connection refused
    sandbox.extra_env["CONVEX_GCP_SQL_PROBE_ADDR"] = f"127.0.0.1:{port}"
    sandbox.database_down()  # and so the fake backend never binds /version
    r = sandbox.run()
    assert r.rc == 75
    assert f"PREFLIGHT FAIL cloud-sql: Cloud SQL unreachable: TCP 127.0.0.1:{port}" in r.stderr
    assert "cloudsql-proxy" not in sandbox.docker_state()["containers"]


def test_preflight_reports_sqladmin_permission(sandbox):
    sandbox.apis.sql_mode = "forbidden"
    r = sandbox.run()
    assert r.rc == 0, r.stderr  # diagnostics only
    assert "PREFLIGHT FAIL sqladmin" in r.stderr and "roles/cloudsql.client" in r.stderr
    assert "sqlservice.admin" in r.stderr
    q = [q for q in sandbox.apis.requests if "/instances/" in q["path"]]
    assert q[0]["path"] == "/v1/projects/test-proj/instances/convex-db"


def test_preflight_mode_only_diagnoses(sandbox, booted):
    sandbox.clear_calls()
    r = sandbox.run("preflight")
    assert r.rc == 0, r.stderr
    assert "PREFLIGHT PASS backend-version" in r.stderr and "PREFLIGHT PASS cloud-sql" in r.stderr
    assert sandbox.docker("run") == [] and sandbox.calls("mount") == []


def test_no_service_account(sandbox):
    sandbox.metadata.has_service_account = False
    r = sandbox.run()
    assert r.rc == 1 and "no service account" in r.stderr


def test_an_unexpected_failure_names_the_line_that_called_the_helper(sandbox):
    """The ERR trap logs the failing line; inside a helper (mkdir_p, rm_f) that line is the helper's,
    so the log also names the helper and the line that called it."""
    blocker = sandbox.tmp / "not-a-directory"
    blocker.write_text("")
    sandbox.extra_env["CONVEX_GCP_RUN_DIR"] = str(blocker / "run")
    r = sandbox.run()
    assert r.rc == 1
    line = next(x for x in r.stderr.splitlines() if "unexpected failure" in x)
    caller = int(line.split("called from line ")[1].split(":")[0])
    assert " in mkdir_p, called from line " in line
    assert "mkdir_p" in SCRIPT.read_text().splitlines()[caller - 1], line
