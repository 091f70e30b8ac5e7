"""Throwaway local PostgreSQL clusters set up like Cloud SQL: a `cloudsqlsuperuser` role owns
the Convex database; `convex` is a member of it, `outsider` is not. One cluster speaks
plaintext (like the Auth Proxy's local listener), one requires TLS (like ssl_mode
ENCRYPTED_ONLY) with a throwaway self-signed certificate."""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.session import session_dir

MAX_CONNECTIONS = 30
PASSWORDS = {"convex": "convex-test-password", "outsider": "outsider-test-password"}
DATABASE = "convex_self_hosted"


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if not found:
        if os.environ.get("CI"):
            raise RuntimeError("PostgreSQL server binaries are missing: apt-get install postgresql")
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    return found[-1]


def _as_owner(command: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def initdb(data: Path) -> None:
    """A new cluster's files in `data` (which must not exist yet), owned by the server's user. initdb
    runs once per session; later clusters copy its stopped cluster, a valid cluster as it stands
    (file-system-level backup of a shut-down server: postgresql.org/docs/current/backup-file.html).
    An initdb costs ~0.4 s of CPU and the suite starts several clusters per worker."""
    initdb_bin = _bin("initdb")
    shared = session_dir()
    template = shared / f"pg-template-{Path(initdb_bin).parts[4]}"  # the major version: /usr/lib/postgresql/<major>/bin
    with open(shared / "pg-template.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one worker makes it, the others wait and copy
        if not template.exists():
            building = Path(tempfile.mkdtemp(prefix="pg-template-", dir=shared))
            if os.geteuid() == 0:
                shutil.chown(building, "postgres")
            subprocess.run(_as_owner([initdb_bin, "--no-sync", "-D", str(building), "-U", "admin", "--auth=trust", "-E", "UTF8"]),
                           check=True, capture_output=True)
            building.rename(template)
    subprocess.run(["cp", "-a", str(template), str(data)], check=True)  # -a keeps the owner and the 0700 mode


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        # The key type is not under test; P-256 is generated in ~5 ms, RSA-2048 in ~180 ms.
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", f"/CN={name}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@dataclass
class Cluster:
    port: int
    tls: bool
    ca_file: str = ""

    def admin(self, sql: str, dbname: str = "postgres") -> None:
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "admin", "-d", dbname, "-v", "ON_ERROR_STOP=1", "-qc", sql],
                       check=True, capture_output=True, env={**os.environ, "PGSSLMODE": "disable"})


def _start(root: Path, tls: bool) -> tuple[Cluster, list[str]]:
    data = root / ("tls" if tls else "plain")
    port = _free_port()
    initdb(data)
    conf = [f"port = {port}", "listen_addresses = '127.0.0.1'", f"max_connections = {MAX_CONNECTIONS}",
            f"unix_socket_directories = '{root}'", "password_encryption = 'scram-sha-256'"]
    cluster = Cluster(port, tls)
    if tls:
        cert, key = self_signed(root, "server")
        shutil.copy(cert, data / "server.crt")
        shutil.copy(key, data / "server.key")
        os.chmod(data / "server.key", 0o600)
        if os.geteuid() == 0:
            shutil.chown(data / "server.crt", "postgres")
            shutil.chown(data / "server.key", "postgres")
        conf += ["ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'"]
        cluster.ca_file = str(cert)
        hba = ["host all admin 127.0.0.1/32 trust", "hostssl all all 127.0.0.1/32 scram-sha-256"]
    else:
        conf += ["ssl = off"]
        hba = ["host all admin 127.0.0.1/32 trust", "host all all 127.0.0.1/32 scram-sha-256"]
    with open(data / "postgresql.conf", "a") as handle:
        handle.write("\n".join(conf) + "\n")
    (data / "pg_hba.conf").write_text("\n".join(["local all admin trust", *hba]) + "\n")
    stop = _as_owner([_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])
    subprocess.run(_as_owner([_bin("pg_ctl"), "-D", str(data), "-l", str(root / f"{data.name}.log"), "-w", "start"]), check=True, capture_output=True)
    cluster.admin(
        "CREATE ROLE cloudsqlsuperuser NOLOGIN CREATEDB CREATEROLE;"
        f"CREATE ROLE convex LOGIN PASSWORD '{PASSWORDS['convex']}' IN ROLE cloudsqlsuperuser;"
        f"CREATE ROLE outsider LOGIN PASSWORD '{PASSWORDS['outsider']}';"
    )
    cluster.admin(f"CREATE DATABASE {DATABASE} OWNER cloudsqlsuperuser")
    return cluster, stop


@pytest.fixture(scope="session")
def clusters():
    _bin("initdb")
    root = Path(tempfile.mkdtemp(prefix="convex-gcp-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    os.chmod(root, 0o755)
    started = []
    try:
        plain, stop_plain = _start(root, tls=False)
        started.append(stop_plain)
        tls, stop_tls = _start(root, tls=True)
        started.append(stop_tls)
        yield {"plain": plain, "tls": tls, "root": root}
    finally:
        for stop in started:
            subprocess.run(stop, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
