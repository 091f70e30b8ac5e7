"""Tokens, the watcher's lock, container isolation, COS reboots and image references (issue 10)."""

from __future__ import annotations

import fcntl
import json

import pytest

from sandbox import ADMIN_KEY_SECRET_ID, BACKEND_IMAGE, FORWARD_RULES, HOST_RULES, INSTANCE_SECRET_ID, wait_for


def test_token_expiring_mid_run_is_refreshed(sandbox):
    """The metadata server hands out a cached token with `expires_in` left; a run outliving it refetches
    instead of dying on a 401 with a misleading permission/scope message."""
    # `expires_in` 0, and every token issued before a finished pull is dead after it (an event, not a
    # wall-clock lifetime a loaded machine could outrun): a token the script kept from before the pulls
    # meets a 401 after them.
    tokens = sandbox.metadata.tokens
    tokens.reported_expires_in = 0
    tokens.dead_after = lambda issued_at: any(c["t1"] > issued_at for c in sandbox.docker("pull"))
    sandbox.set_docker(pull_delay=0.2)
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    assert len(sandbox.metadata.tokens.issued) >= 2
    assert "permission/scope" not in r.stderr
    assert len(sandbox.apis.secrets[ADMIN_KEY_SECRET_ID]) == 1
    # Every API call carried a token that was valid when sent: none was answered 401.
    assert "HTTP 401" not in r.stderr


def test_a_token_is_reused_while_it_is_valid(sandbox, booted):
    """One token for the whole boot: `expires_in` (3599 s here) is read and kept, so the API calls
    after the first (five in all here) do not each ask the metadata server again."""
    token_gets = [q for q in sandbox.metadata.requests if q["path"].endswith("/token")]
    api_calls = [q for q in sandbox.apis.requests if q["auth"].startswith("Bearer ")]
    assert len(api_calls) >= 4 and len(token_gets) == 1


def test_401_refetches_the_token_once(sandbox):
    """The token stops working at the first API call (the read-ahead's, whose 401s are dropped): the
    step's own call gets 401, fetches a new token once, and goes on with it."""
    sandbox.apis.cut_tokens_short = 1
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    assert "HTTP 401" in r.stderr and "fetching a fresh access token and retrying once" in r.stderr
    token_gets = [q for q in sandbox.metadata.requests if q["path"].endswith("/token")]
    assert len(token_gets) >= 2


def test_persistent_401_is_not_retried_forever(sandbox):
    sandbox.apis.cut_tokens_short = 2  # the fresh token too
    r = sandbox.run()
    assert r.rc == 1
    accesses = [q for q in sandbox.apis.requests if q["path"] == f"/v1/{INSTANCE_SECRET_ID}/versions/latest:access"]
    assert len(accesses) == 3  # the read-ahead's (401: dropped), the step's call, and its one retry with a fresh token
    for value in sandbox.secret_values():
        assert value not in r.output


def test_watcher_does_not_queue_a_reconcile_while_a_run_holds_the_lock(sandbox, booted):
    """A boot longer than the pending-retry interval used to trigger a redundant full reconcile."""
    (sandbox.run_dir / "pending").touch()  # what a run still in progress leaves
    with open(sandbox.run_dir / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # the run in progress
        watcher = sandbox.popen("watch")
        try:
            assert wait_for(lambda: sum("wait_for_change=true" in q["path"] for q in sandbox.metadata.requests) >= 3)
            assert not any(q["path"].endswith("/startup-script") for q in sandbox.metadata.requests)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
        # Lock released with `pending` still there: now the periodic retry runs.
        assert wait_for(lambda: not (sandbox.run_dir / "pending").exists())
        out = sandbox.stop(watcher)
    assert "a run holds" in out and "not queueing another" in out
    assert "previous run unfinished; periodic retry" in out


def test_metadata_server_blocked_for_backend_and_dashboard_not_proxy(sandbox, booted):
    """Whole chains (sandbox.HOST_RULES / FORWARD_RULES), each jumped to first: the proxy's exemption is
    its bridge, and only the backend's bridge reaches the proxy's port."""
    assert sandbox.iptables_rules("DOCKER-USER") == ["-j CVX-FWD"]
    assert sandbox.iptables_rules("OUTPUT") == ["-j CVX-HOST"]
    assert sandbox.iptables_rules("CVX-FWD") == FORWARD_RULES
    assert sandbox.iptables_rules("CVX-HOST") == HOST_RULES
    nets = sandbox.docker_state()["networks"]
    for net, bridge in (("convex-db", "cvx-db"), ("convex-web", "cvx-web"), ("convex-proxy", "cvx-proxy")):
        assert f"com.docker.network.bridge.name={bridge}" in nets[net]["Options"]
    containers = sandbox.docker_state()["containers"]
    assert containers["cloudsql-proxy"]["opts"]["--ip"] == ["172.30.250.34"]
    assert "--ip" not in containers["convex-backend"]["opts"]
    # The proxy is alone on its bridge: the exemption is never shared.
    assert [n for n, c in containers.items() if "convex-proxy" in c["opts"]["--network"]] == ["cloudsql-proxy"]
    assert containers["convex-dashboard"]["opts"]["--network"] == ["convex-web"]
    assert containers["convex-backend"]["opts"]["--network"] == ["convex-db"]
    # A rerun changes no rule.
    sandbox.clear_calls()
    assert sandbox.run("reconcile").rc == 0
    assert sandbox.iptables_rules("CVX-FWD") == FORWARD_RULES
    assert not [c for c in sandbox.calls("iptables") if c["argv"][1] in ("-A", "-I", "-D", "-N", "-F", "-X", "-E")]


def test_the_address_keyed_exemption_of_earlier_versions_is_removed(sandbox, booted):
    """Earlier versions let 172.30.250.2 on cvx-db through: any container there that could claim the
    address reached the metadata server. An upgrade deletes those rules."""
    state = json.loads((sandbox.fake_root / "iptables.json").read_text())
    state["DOCKER-USER"] += ["-i cvx-db -s 172.30.250.2/32 -d 169.254.169.254/32 -j RETURN",
                             "-i cvx-db -d 169.254.169.254/32 -j REJECT"]
    (sandbox.fake_root / "iptables.json").write_text(json.dumps(state))
    assert sandbox.run("reconcile").rc == 0
    assert sandbox.iptables_rules("DOCKER-USER") == ["-j CVX-FWD"]


def test_no_proxy_no_container_on_the_exempt_bridge(sandbox, booted):
    sandbox.render(sandbox.settings.model_copy(update={"connection_mode": "plaintext"}))
    sandbox.publish()
    r = sandbox.run("reconcile")
    assert r.rc == 0, r.stderr
    assert sandbox.iptables_rules("CVX-FWD") == FORWARD_RULES
    assert not [n for n, c in sandbox.docker_state()["containers"].items() if "convex-proxy" in c["opts"]["--network"]]
    assert not (sandbox.unit_dir / "cloudsql-proxy.service").exists()


def test_iptables_failure_refuses_to_start_containers(sandbox):
    f = sandbox.bin / "iptables"
    f.write_text("#!/bin/bash\ncase \"$*\" in *-nL*|*'-C FORWARD'*) exit 0;; *-I*) echo 'iptables: Permission denied' >&2; exit 4;; esac; exit 1\n")
    f.chmod(0o755)
    r = sandbox.run()
    assert r.rc == 1 and "refusing to start containers that could reach the metadata server" in r.stderr
    assert sandbox.docker("run") == []


def test_docker_user_chain_not_reached_from_forward_refuses_to_start_containers(sandbox):
    """A DOCKER-USER chain that FORWARD does not jump to (dockerd on the other iptables backend,
    or dockerd without iptables) is never evaluated: rules added there would block nothing."""
    (sandbox.fake_root / "iptables.json").write_text(json.dumps({"OUTPUT": [], "DOCKER-USER": []}))
    r = sandbox.run()
    assert r.rc == 1 and "no FORWARD jump to DOCKER-USER" in r.stderr
    assert "refusing to start containers that could reach the metadata server" in r.stderr
    assert sandbox.docker("run") == [] and sandbox.iptables_rules() == []
    assert sandbox.iptables_rules("OUTPUT") == ["-j CVX-HOST"]  # the host's chain does not depend on dockerd


def test_restored_legacy_container_with_missing_bind_source(sandbox, booted):
    """An old `--restart always` backend is restored by dockerd at boot, before the data disk is
    mounted; on COS /mnt/disks is a tmpfs, so its bind source is missing and it cannot start. The
    unit replaces it once the disk is mounted."""
    st = sandbox.docker_state()
    legacy = dict(st["containers"]["convex-backend"])
    legacy["opts"] = {k: v for k, v in legacy["opts"].items() if k != "--rm"}
    legacy["opts"]["--restart"] = ["always"]
    st["containers"]["convex-backend"] = legacy
    sandbox.set_docker(containers=st["containers"])
    sandbox.reboot()
    assert sandbox.docker_state()["containers"]["convex-backend"]["status"] == "exited"
    sandbox.clear_calls()
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    assert ["rm", "-f", "convex-backend"] in [c["argv"] for c in sandbox.docker("rm")]
    c = sandbox.docker_state()["containers"]["convex-backend"]
    assert c["status"] == "running" and "--restart" not in c["opts"]


def test_gcplogs_outage_does_not_stop_starts(sandbox):
    """gcplogs fails a start when Cloud Logging is unreachable (the fake mirrors moby's driver);
    json-file needs no network, so a logging outage changes nothing."""
    sandbox.set_docker(logging_down=True)
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    assert {c["status"] for c in sandbox.docker_state()["containers"].values()} == {"running"}


def test_digest_pinned_image_references_are_accepted(sandbox):
    digest = "sha256:" + "ab" * 32
    sandbox.config["BACKEND_IMAGE"] = f"{BACKEND_IMAGE}@{digest}"
    sandbox.config["DASHBOARD_IMAGE"] = sandbox.config["DASHBOARD_IMAGE"].split(":")[0] + f"@{digest}"
    sandbox.publish()
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    assert sandbox.docker_state()["containers"]["convex-backend"]["image"] == f"{BACKEND_IMAGE}@{digest}"


def test_bad_image_reference_is_refused(sandbox):
    sandbox.config["BACKEND_IMAGE"] = "ghcr.io/get-convex/convex-backend@sha256:short"
    sandbox.publish()
    r = sandbox.run()
    assert r.rc == 1 and "invalid image reference" in r.stderr


def test_a_run_reads_its_secrets_and_the_sql_instance_ahead_in_one_curl(sandbox, booted):
    """read_ahead: the three secrets and the SQL Admin instance in one curl, which reuses its
    connection to a host (the fake serves both APIs on one; a VM talks to two); each is read once."""
    from sandbox import DB_PASSWORD_SECRET_ID

    sandbox.clear_calls()
    r = sandbox.run("reconcile")
    assert r.rc == 0, r.stderr
    reads = [q for q in sandbox.apis.requests if q["method"] == "GET"]
    assert sorted(q["path"] for q in reads) == sorted(
        [f"/v1/{sid}/versions/latest:access" for sid in (INSTANCE_SECRET_ID, DB_PASSWORD_SECRET_ID, ADMIN_KEY_SECRET_ID)]
        + ["/v1/projects/test-proj/instances/convex-db"])
    assert len({q["conn"] for q in reads}) == 1
    assert "PREFLIGHT PASS sqladmin" in r.stderr


@pytest.mark.parametrize("fault", ["cut_next", "empty_next"])
def test_an_answer_cut_short_or_empty_is_read_again_by_its_step(sandbox, booted, fault):
    """A 200 whose body is cut off is curl's exit 18 for that transfer, with code 200; an empty 200 is
    what curl 7.75.0 could leave of a kept answer (it printed -w before closing the -o file). The
    read-ahead drops both (and after a failed transfer reads no further), and each step reads on its own."""
    sandbox.clear_calls()
    getattr(sandbox.apis, fault)[INSTANCE_SECRET_ID] = 1
    r = sandbox.run("reconcile")
    assert r.rc == 0, r.stderr
    reads = [q["path"] for q in sandbox.apis.requests if q["method"] == "GET"]
    assert reads.count(f"/v1/{INSTANCE_SECRET_ID}/versions/latest:access") == 2
    env = dict(e.split("=", 1) for e in sandbox.docker_state()["containers"]["convex-backend"]["env"])
    assert env["INSTANCE_SECRET"] == sandbox.instance_secret and f":{sandbox.db_password}@" in env["POSTGRES_URL"]
    assert sandbox.runs() == []  # the same secrets: nothing restarted


def test_an_admin_key_stored_while_the_vm_boots_is_kept(sandbox):
    """The read-ahead finds no admin key version on a first boot; the admin-key step, minutes later
    on a VM, asks again, so a version another writer stored meanwhile is kept and none is added."""
    import shutil

    token, _ = sandbox.apis.tokens.get()  # the token the metadata server hands the VM too
    body = sandbox.tmp / "other-key.json"
    body.write_text('{"payload":{"data":"b3RoZXIta2V5"}}')  # base64 of "other-key"
    once = sandbox.tmp / "added"
    url = f"{sandbox.env()['SECRETMANAGER_ENDPOINT']}/v1/{ADMIN_KEY_SECRET_ID}:addVersion"
    real = shutil.which("sha256sum", path="/usr/local/bin:/usr/bin:/bin")
    shim = sandbox.bin / "sha256sum"  # the units step: after the read-ahead, before the admin-key step
    shim.write_text(f"#!/bin/bash\n[[ -e {once} ]] || {{ touch {once}; curl -sf -o /dev/null -H 'Authorization: Bearer {token}' "
                    f"--data-binary @{body} {url}; }}\nexec {real} \"$@\"\n")
    shim.chmod(0o755)
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    assert once.exists() and sandbox.apis.secrets[ADMIN_KEY_SECRET_ID] == [b"other-key"]
    assert f"already stored in {ADMIN_KEY_SECRET_ID}" in r.stderr


def test_after_a_failed_transfer_the_read_ahead_reads_no_further(sandbox, booted):
    """--fail-early: once one transfer fails (the admin key's answer cut short), curl reads none of
    the URLs after it, so a dead API costs the read-ahead one timeout, not one per URL; their steps
    read them on connections of their own."""
    from sandbox import DB_PASSWORD_SECRET_ID

    sandbox.clear_calls()
    sandbox.apis.cut_next[ADMIN_KEY_SECRET_ID] = 1
    r = sandbox.run("reconcile")
    assert r.rc == 0, r.stderr
    reads = [q for q in sandbox.apis.requests if q["method"] == "GET"]
    ahead = reads[0]["conn"]  # the instance secret, first in the read-ahead
    later = [q for q in reads if q["path"] in (f"/v1/{DB_PASSWORD_SECRET_ID}/versions/latest:access",
                                              "/v1/projects/test-proj/instances/convex-db")]
    # Each on its own connection: its step's curl (without --fail-early both would come from the
    # read-ahead's curl, which opens one new connection after the cut one).
    assert len(later) == 2 and len({ahead, *(q["conn"] for q in later)}) == 3, reads


def test_a_curl_without_per_transfer_exit_codes_keeps_no_answer(sandbox, booted):
    """curl before 7.75.0 prints nothing for %{exitcode} (it only warns): then no answer can be shown
    whole, none is kept, and every step reads on its own."""
    import shutil

    real = shutil.which("curl", path="/usr/local/bin:/usr/bin:/bin")
    shim = sandbox.bin / "curl"
    shim.write_text(f'#!/bin/bash\np=" %{{exitcode}}"\nargs=()\nfor a in "$@"; do args+=("${{a//"$p"/}}"); done\nexec {real} "${{args[@]}}"\n')
    shim.chmod(0o755)
    sandbox.clear_calls()
    r = sandbox.run("reconcile")
    assert r.rc == 0, r.stderr
    reads = [q["path"] for q in sandbox.apis.requests if q["method"] == "GET"]
    assert len(reads) == 8 and len(set(reads)) == 4, reads  # each of the four: the read-ahead's, then its step's
    assert sandbox.runs() == []

