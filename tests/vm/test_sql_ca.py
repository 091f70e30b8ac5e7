"""connectionMode ssl on the VM: the server CA bundle is read from the SQL Admin API, mounted read-only
into the backend, re-checked periodically, and the backend restarts only when the bundle changed."""

from __future__ import annotations

import os
import stat

import pytest

from sandbox import wait_for
from tlsutil import make_ca


@pytest.fixture(scope="module")
def cas(tmp_path_factory):
    d = tmp_path_factory.mktemp("cas")
    return [make_ca(d, f"ca{i}")[0].read_text() for i in range(3)]


def _backend(sb) -> dict:
    return sb.docker_state()["containers"]["convex-backend"]


def _mount_source(container: dict) -> str:
    for m in container["opts"]["--mount"]:
        if "target=/convex-gcp/sql-ca.pem" in m:
            assert m.endswith(",readonly"), m
            return dict(part.split("=", 1) for part in m.split(",") if "=" in part)["source"]
    raise AssertionError("the CA bundle is not mounted")


def _certs(text: str) -> list[str]:
    blocks = text.split("-----END CERTIFICATE-----")
    return sorted(b.strip() + "\n-----END CERTIFICATE-----" for b in blocks if b.strip())


def test_bundle_fetched_and_mounted_read_only(sandbox, cas):
    sandbox.use_ssl(cas[:2])
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    bundle = sandbox.state_dir / "sql-ca.pem"
    assert _certs(bundle.read_text()) == _certs(cas[0] + cas[1])
    assert stat.S_IMODE(os.stat(bundle).st_mode) == 0o644
    backend = _backend(sandbox)
    assert _mount_source(backend) == str(bundle)
    env = dict(e.split("=", 1) for e in backend["env"])
    assert env["PG_CA_FILE"] == "/convex-gcp/sql-ca.pem" and "DO_NOT_REQUIRE_SSL" not in env
    assert env["POSTGRES_URL"] == f"postgresql://convex:{sandbox.db_password}@abc123.def456.europe-west1.sql-psa.goog:5432"
    # No proxy in ssl mode; the CAs came from connectSettings (what Google's connectors trust) plus
    # listServerCas (the upcoming CA of a rotation).
    assert "cloudsql-proxy" not in sandbox.docker_state()["containers"]
    paths = [q["path"] for q in sandbox.apis.requests]
    assert "/v1/projects/test-proj/instances/convex-db/connectSettings" in paths
    assert "/v1/projects/test-proj/instances/convex-db/listServerCas" in paths
    assert "PREFLIGHT PASS sql-ca: 2 CA certificate(s) from connectSettings+listServerCas" in r.stderr


def test_unchanged_bundle_does_not_restart_backend(sandbox, cas):
    sandbox.use_ssl(cas[:2])
    assert sandbox.run().rc == 0
    sandbox.clear_calls()
    # Same CAs, listed in another order: same bundle bytes, nothing recreated.
    sandbox.apis.server_cas = [cas[1], cas[0]]
    r = sandbox.run("reconcile")
    assert r.rc == 0, r.stderr
    assert sandbox.runs() == [] and sandbox.docker("stop") == []


def test_upcoming_ca_restarts_backend_exactly_once(sandbox, cas):
    sandbox.use_ssl(cas[:1])
    assert sandbox.run().rc == 0
    old = _backend(sandbox)["id"]
    sandbox.clear_calls()
    sandbox.apis.server_cas = [cas[0], cas[2]]  # rotation: an upcoming CA is added
    assert sandbox.run("reconcile").rc == 0
    assert sandbox.runs() == ["convex-backend"]
    assert [c["argv"] for c in sandbox.docker("stop")] == [["stop", "convex-backend"]]
    assert _backend(sandbox)["id"] != old
    assert _certs((sandbox.state_dir / "sql-ca.pem").read_text()) == _certs(cas[0] + cas[2])
    sandbox.clear_calls()
    assert sandbox.run("reconcile").rc == 0
    assert sandbox.runs() == []


def test_list_server_cas_forbidden_keeps_connect_settings_chain(sandbox, cas):
    sandbox.use_ssl(cas[:2])
    sandbox.apis.list_cas_mode = "forbidden"
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    assert "PREFLIGHT WARN sql-ca-list: listServerCas denied (HTTP 403" in r.stderr
    # connectSettings serverCaCert holds the current CA (chain) only.
    assert _certs((sandbox.state_dir / "sql-ca.pem").read_text()) == _certs(cas[0])
    assert "PREFLIGHT PASS sql-ca: 1 CA certificate(s) from connectSettings" in r.stderr


def test_connect_settings_chain_with_several_pem_blocks(sandbox, cas):
    """GOOGLE_MANAGED_CAS_CA: serverCaCert.cert holds the whole chain; every block is trusted
    (cloud-sql-go-connector refresh.go decodes PEM blocks in a loop)."""
    sandbox.use_ssl([cas[0] + cas[1]])
    sandbox.apis.list_cas_mode = "forbidden"
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    assert _certs((sandbox.state_dir / "sql-ca.pem").read_text()) == _certs(cas[0] + cas[1])


def test_connect_settings_denied_uses_list_server_cas(sandbox, cas):
    sandbox.use_ssl(cas[:2])
    sandbox.apis.connect_mode = "forbidden"
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    assert "PREFLIGHT WARN sql-ca-connect: connectSettings answered HTTP 403" in r.stderr
    assert "PREFLIGHT PASS sql-ca: 2 CA certificate(s) from listServerCas" in r.stderr


def test_api_down_keeps_last_bundle_and_first_boot_without_one_fails(sandbox, cas):
    sandbox.use_ssl(cas[:2])
    sandbox.apis.sql_mode = "forbidden"
    r = sandbox.run()
    assert r.rc == 1 and "no server CA bundle for test-proj:europe-west1:convex-db" in r.stderr
    sandbox.apis.sql_mode = "ok"
    assert sandbox.run().rc == 0
    sandbox.clear_calls()
    sandbox.apis.sql_mode = "forbidden"
    r = sandbox.run("reconcile")
    assert r.rc == 0, r.stderr
    assert "keeping the last bundle" in r.stderr and sandbox.runs() == []


def test_bundle_survives_reboot(sandbox, cas):
    sandbox.use_ssl(cas[:2])
    assert sandbox.run().rc == 0
    before = (sandbox.state_dir / "sql-ca.pem").read_bytes()
    sandbox.reboot()
    sandbox.clear_calls()
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    # /etc is a tmpfs: the backend unit starts once, with the bundle kept on persistent disk.
    assert sandbox.runs() == ["convex-backend", "convex-dashboard"]
    assert "server CA bundle" not in r.stderr.replace("PREFLIGHT", "")
    assert (sandbox.state_dir / "sql-ca.pem").read_bytes() == before


def test_switch_proxy_to_ssl_removes_proxy_and_back(sandbox, booted, cas):
    proxy = dict(sandbox.config)
    sandbox.use_ssl(cas[:1])
    assert sandbox.run("reconcile").rc == 0
    assert "cloudsql-proxy" not in sandbox.docker_state()["containers"]
    assert (sandbox.run_dir / "ca-refresh").exists()
    sandbox.config = proxy
    sandbox.backend_env.pop("PG_CA_FILE")
    sandbox.backend_env["DO_NOT_REQUIRE_SSL"] = "1"
    sandbox.publish()
    r = sandbox.run("reconcile")
    assert r.rc == 0, r.stderr
    assert "cloudsql-proxy" in sandbox.docker_state()["containers"]
    assert not any("sql-ca" in m for m in _backend(sandbox)["opts"]["--mount"])
    assert not (sandbox.run_dir / "ca-refresh").exists()


def test_watcher_picks_up_a_new_ca_by_itself(sandbox, cas):
    sandbox.use_ssl(cas[:1])
    assert sandbox.run().rc == 0
    sandbox.clear_calls()
    sandbox.extra_env["CONVEX_GCP_CA_REFRESH_MS"] = "200"
    sandbox.extra_env["CONVEX_GCP_WATCH_TIMEOUT"] = "3600"  # 180 s in the sandbox: longer than any wait_for
    watcher = sandbox.popen("watch")
    try:
        def checks() -> int:
            return sum(q["path"].endswith("/listServerCas") for q in sandbox.apis.requests)

        assert wait_for(lambda: checks() >= 1)
        assert sandbox.runs() == []  # periodic checks of an unchanged bundle restart nothing
        sandbox.apis.server_cas = [cas[0], cas[1]]
        assert wait_for(lambda: sandbox.runs() == ["convex-backend"]), "the watcher did not apply the new CA bundle"
        seen = checks()
        assert wait_for(lambda: checks() >= seen + 2)
        assert sandbox.runs() == ["convex-backend"]  # and it settles: exactly one restart
    finally:
        out = sandbox.stop(watcher)
    assert "periodic server CA check" in out


def test_escaped_google_json_is_decoded(sandbox, cas):
    """Some Google JSON encoders write '=' as \\u003d and '/' as \\/: secrets and PEMs must survive it."""
    sandbox.use_ssl(cas[:2])
    sandbox.apis.escape_json = True
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    assert _certs((sandbox.state_dir / "sql-ca.pem").read_text()) == _certs(cas[0] + cas[1])
    env = dict(e.split("=", 1) for e in _backend(sandbox)["env"])
    assert env["INSTANCE_SECRET"] == sandbox.instance_secret
    assert f":{sandbox.db_password}@" in env["POSTGRES_URL"]
