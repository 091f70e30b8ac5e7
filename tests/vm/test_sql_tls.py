"""The TLS logic of connectionMode ssl against a real PostgreSQL (Debian's `postgresql`).

The server certificate is issued like a CAS-based Cloud SQL one: by a CA, with the instance's DNS name
in the SAN only (its CN is a `project:instance` string, not a host name). The client verifies like
Convex's rustls: chain to the given CAs AND host name against the SAN (libpq sslmode=verify-full).
The CA bundle is the file the real vm/startup.sh writes from a listServerCas answer."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

from tests.doctor.conftest import _as_owner, _bin, _free_port, initdb
from tlsutil import make_ca, make_intermediate_ca, make_server_cert

NAME = "abc123.def456.europe-west1.sql-psa.goog"
PASSWORD = "convex-tls-test-password"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    current, upcoming, unrelated = make_ca(d, "current-ca"), make_ca(d, "upcoming-ca"), make_ca(d, "unrelated-ca")
    return {
        "dir": d,
        "current": current,
        "upcoming": upcoming,
        "unrelated": unrelated,
        "leaf_current": make_server_cert(d, "server-current", current, NAME),
        "leaf_upcoming": make_server_cert(d, "server-upcoming", upcoming, NAME),
    }


class Server:
    def __init__(self, root: Path, port: int):
        self.root, self.port, self.data = root, port, root / "data"

    def install_cert(self, leaf: tuple[Path, Path]) -> None:
        for src, dst in zip(leaf, ("server.crt", "server.key")):
            shutil.copy(src, self.data / dst)
            os.chmod(self.data / dst, 0o600)
            if os.geteuid() == 0:
                shutil.chown(self.data / dst, "postgres")

    def ctl(self, *args: str) -> None:
        subprocess.run(_as_owner([_bin("pg_ctl"), "-D", str(self.data), *args]), check=True, capture_output=True)


@pytest.fixture(scope="module")
def server(pki):
    _bin("initdb")
    root = Path(tempfile.mkdtemp(prefix="convex-gcp-tls-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    os.chmod(root, 0o755)
    srv = Server(root, _free_port())
    started = False
    try:
        initdb(srv.data)
        srv.install_cert(pki["leaf_current"])
        with open(srv.data / "postgresql.conf", "a") as handle:
            handle.write(f"port = {srv.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\n"
                         "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\npassword_encryption = 'scram-sha-256'\n")
        # Like ssl_mode ENCRYPTED_ONLY: TLS required, no client certificate asked for.
        (srv.data / "pg_hba.conf").write_text("local all admin trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n")
        srv.ctl("-l", str(root / "pg.log"), "-w", "start")
        started = True
        subprocess.run(_as_owner(["psql", "-h", str(root), "-p", str(srv.port), "-U", "admin", "-d", "postgres", "-v", "ON_ERROR_STOP=1",
                                  "-qc", f"CREATE ROLE convex LOGIN PASSWORD '{PASSWORD}'"]), check=True, capture_output=True)
        yield srv
    finally:
        if started:
            subprocess.run(_as_owner([_bin("pg_ctl"), "-D", str(srv.data), "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def vm_bundle(sandbox, pki) -> Path:
    """The bundle the VM writes during a rotation (current + upcoming CA), by the real startup script."""
    sandbox.use_ssl([pki["current"][0].read_text(), pki["upcoming"][0].read_text()], host=NAME)
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    return sandbox.state_dir / "sql-ca.pem"


def connect(server: Server, host: str, bundle: Path, hostaddr: str | None = "127.0.0.1") -> str:
    params = dict(host=host, port=server.port, user="convex", password=PASSWORD, dbname="postgres",
                  sslmode="verify-full", sslrootcert=str(bundle), sslcert="/nonexistent", connect_timeout=5)
    if hostaddr:
        params["hostaddr"] = hostaddr
    with psycopg.connect(**params) as conn:
        return conn.execute("SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0]


def test_vm_bundle_verifies_the_server_by_its_dns_name(server, pki, vm_bundle):
    server.install_cert(pki["leaf_current"])
    server.ctl("reload")
    assert connect(server, NAME, vm_bundle) == "true"


def test_connecting_by_ip_fails_host_name_verification(server, pki, vm_bundle):
    server.install_cert(pki["leaf_current"])
    server.ctl("reload")
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        connect(server, "127.0.0.1", vm_bundle, hostaddr=None)


def test_bundle_of_an_unrelated_ca_is_rejected(server, pki, tmp_path):
    server.install_cert(pki["leaf_current"])
    server.ctl("reload")
    unrelated = tmp_path / "unrelated.pem"
    unrelated.write_text(pki["unrelated"][0].read_text())
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        connect(server, NAME, unrelated)


def test_bundle_keeps_working_after_the_server_rotates_to_the_upcoming_ca(server, pki, vm_bundle, tmp_path):
    only_current = tmp_path / "current-only.pem"
    only_current.write_text(pki["current"][0].read_text())
    server.install_cert(pki["leaf_upcoming"])
    server.ctl("reload")
    try:
        assert connect(server, NAME, vm_bundle) == "true"
        # Why the bundle must hold the upcoming CA before the switch:
        with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
            connect(server, NAME, only_current)
    finally:
        server.install_cert(pki["leaf_current"])
        server.ctl("reload")


def test_two_level_chain_like_the_shared_cas_hierarchy(server, pki, sandbox, tmp_path):
    """Cloud SQL's shared CA is root -> regional subordinate -> server certificate. Whether the server
    sends the subordinate or the API returns it, the bundle the VM writes verifies the chain by name."""
    d = pki["dir"]
    root = make_ca(d, "cas-root")
    subordinate = make_intermediate_ca(d, "cas-regional", root)
    leaf = make_server_cert(d, "server-cas", subordinate, NAME)
    chained = d / "server-cas-chain.crt"
    chained.write_text(leaf[0].read_text() + subordinate[0].read_text())
    try:
        # The server presents leaf + subordinate; the API returned only the root.
        server.install_cert((chained, leaf[1]))
        server.ctl("reload")
        sandbox.use_ssl([root[0].read_text()], host=NAME)
        assert sandbox.run().rc == 0
        assert connect(server, NAME, sandbox.state_dir / "sql-ca.pem") == "true"
        # The server presents only its leaf; the API returned subordinate and root.
        server.install_cert(leaf)
        server.ctl("reload")
        sandbox.use_ssl([subordinate[0].read_text(), root[0].read_text()], host=NAME)
        assert sandbox.run().rc == 0
        assert connect(server, NAME, sandbox.state_dir / "sql-ca.pem") == "true"
        # Neither side has the subordinate: verification fails, so the test can tell.
        root_only = tmp_path / "root-only.pem"
        root_only.write_text(root[0].read_text())
        with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
            connect(server, NAME, root_only)
    finally:
        server.install_cert(pki["leaf_current"])
        server.ctl("reload")
