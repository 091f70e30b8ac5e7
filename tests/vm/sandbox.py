"""Sandbox that runs the REAL vm/startup.sh under bash against local fakes.

Used by the pytest suite (tests/vm) and by benchmarks/boot_bench.py.
Real: bash, curl, blkid, mkfs.ext4, e2fsck, resize2fs, base64, sha256sum,
flock, a file-backed disk image. Fake (first on PATH): docker, systemctl,
systemd-run, mount, mountpoint. Fake HTTP on 127.0.0.1: metadata server,
Secret Manager + SQL Admin, proxy readiness + backend /version.
"""

from __future__ import annotations

import json
import os
import secrets as pysecrets
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fakes.google import TOKEN, ApisServer, HealthServer, MetadataServer  # noqa: E402

REPO = HERE.parent.parent
SCRIPT = REPO / "vm" / "startup.sh"
FAKEBIN = HERE / "fakes" / "fakebin.py"
TOOLS = ("docker", "systemctl", "systemd-run", "mount", "mountpoint")
SHA = "652b828b5129e6cdbcaa3c20efa8d116d09ff3bf"
PROJECT = "test-proj"
INSTANCE_SECRET_ID = f"projects/{PROJECT}/secrets/convex-dev-instance-secret"
ADMIN_KEY_SECRET_ID = f"projects/{PROJECT}/secrets/convex-dev-admin-key"
DB_PASSWORD_SECRET_ID = f"projects/{PROJECT}/secrets/convex-dev-db-password"
PROXY_IMAGE = "gcr.io/cloud-sql-connectors/cloud-sql-proxy:2.25.3"
BACKEND_IMAGE = f"ghcr.io/get-convex/convex-backend:{SHA}"
DASHBOARD_IMAGE = f"ghcr.io/get-convex/convex-dashboard:{SHA}"
PROXY_ARGS = ("--private-ip --address=0.0.0.0 --port=5432 --health-check --http-address=0.0.0.0 "
              "--http-port=9090 --structured-logs --max-sigterm-delay=30s --exit-zero-on-sigterm "
              "--auto-iam-authn test-proj:europe-west1:convex-db")


def render_env(values: dict[str, str]) -> str:
    return "".join(f"{k}={values[k]}\n" for k in sorted(values))


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class Sandbox:
    def __init__(self, tmp: Path, *, disk_mb: int = 64, make_disk: bool = True) -> None:
        self.tmp = tmp
        self.bin = tmp / "bin"
        self.fake_root = tmp / "fake"
        self.run_dir = tmp / "run" / "convex-gcp"
        self.mount_point = tmp / "mnt" / "disks" / "convex-data"
        self.state_dir = tmp / "var" / "lib" / "convex-gcp"  # persistent: survives reboot()
        self.disk = tmp / "disk.img"
        for d in (self.bin, self.fake_root, self.run_dir.parent):
            d.mkdir(parents=True, exist_ok=True)
        for tool in TOOLS:
            p = self.bin / tool
            p.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(FAKEBIN.parent)!r})\n"
                         f"import fakebin\nsys.exit(fakebin.main({tool!r}))\n")
            p.chmod(0o755)
        if make_disk:
            subprocess.run(["truncate", "-s", f"{disk_mb}M", str(self.disk)], check=True)

        self.instance_secret = pysecrets.token_hex(32)
        self.db_password = "Pw" + pysecrets.token_hex(12)
        self.config = {
            "CONNECTION_MODE": "proxy",
            "PROXY_IMAGE": PROXY_IMAGE,
            "PROXY_ARGS": PROXY_ARGS,
            "BACKEND_IMAGE": BACKEND_IMAGE,
            "DASHBOARD_IMAGE": DASHBOARD_IMAGE,
            "DASHBOARD_ENABLED": "true",
            "DATA_DEVICE_NAME": "convex-data",
            "PROJECT_ID": PROJECT,
            "INSTANCE_SECRET_ID": INSTANCE_SECRET_ID,
            "ADMIN_KEY_SECRET_ID": ADMIN_KEY_SECRET_ID,
            "DB_PASSWORD_SECRET_ID": "",
        }
        self.backend_env = {
            "CONVEX_CLOUD_ORIGIN": "http://34.1.2.3:3210",
            "CONVEX_SITE_ORIGIN": "http://34.1.2.3:3211",
            "DO_NOT_REQUIRE_SSL": "1",
            "INSTANCE_NAME": "convex-dev",
            "POSTGRES_MAX_CONNECTIONS": "20",
            "POSTGRES_URL": "postgresql://convex-vm%40test-proj.iam@cloudsql-proxy:5432?sslmode=disable",
            "RUST_LOG": "info",
        }
        self.dashboard_env = {"NEXT_PUBLIC_DEPLOYMENT_URL": "http://34.1.2.3:3210"}

        self.metadata = MetadataServer(self._attributes())
        self.apis = ApisServer()
        self.apis.add_secret(INSTANCE_SECRET_ID, self.instance_secret.encode())
        self.apis.add_secret(ADMIN_KEY_SECRET_ID)
        self.apis.add_secret(DB_PASSWORD_SECRET_ID, self.db_password.encode())
        self.health = HealthServer(self.fake_root / "docker.json")
        self.extra_env: dict[str, str] = {}
        self.script_suffix = ""  # appended to the served startup-script (simulates a new version)

    # ------------------------------------------------------------ config --
    def _attributes(self) -> dict[str, str]:
        attrs = {
            "startup-script": SCRIPT.read_text() + getattr(self, "script_suffix", ""),
            "enable-oslogin": "TRUE",
            "convex-gcp-config": render_env(self.config),
            "convex-backend-env": render_env(self.backend_env),
        }
        if self.config.get("DASHBOARD_ENABLED") == "true":
            attrs["convex-dashboard-env"] = render_env(self.dashboard_env)
        return attrs

    def use_ssl(self, server_cas: list[str], host: str = "abc123.def456.europe-west1.sql-psa.goog") -> None:
        """Render connectionMode ssl the way convex_gcp.runtime does, and serve these CA PEMs."""
        for key in ("PROXY_IMAGE", "PROXY_ARGS"):
            self.config.pop(key, None)
        self.config["CONNECTION_MODE"] = "ssl"
        self.config["SQL_INSTANCE"] = "test-proj:europe-west1:convex-db"
        self.config["DB_PASSWORD_SECRET_ID"] = DB_PASSWORD_SECRET_ID
        self.backend_env.pop("DO_NOT_REQUIRE_SSL", None)
        self.backend_env["POSTGRES_URL"] = f"postgresql://convex@{host}:5432"
        self.backend_env["PG_CA_FILE"] = "/convex-gcp/sql-ca.pem"
        self.apis.server_cas = list(server_cas)
        self.publish()

    def publish(self) -> None:
        """Push the current config/env dicts to the metadata server (like `pulumi up`)."""
        attrs = self._attributes()
        with self.metadata.cond:
            self.metadata.attributes = attrs
            self.metadata.cond.notify_all()

    def docker_state(self) -> dict:
        f = self.fake_root / "docker.json"
        return json.loads(f.read_text()) if f.exists() else {}

    def set_docker(self, **knobs) -> None:
        st = self.docker_state()
        st.update(knobs)
        (self.fake_root / "docker.json").write_text(json.dumps(st))

    # --------------------------------------------------------------- run --
    def env(self) -> dict[str, str]:
        env = {
            "PATH": f"{self.bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.tmp),
            "LANG": "C.UTF-8",
            "FAKE_ROOT": str(self.fake_root),
            "GCE_METADATA_HOST": f"127.0.0.1:{self.metadata.port}",
            "SECRETMANAGER_ENDPOINT": f"http://127.0.0.1:{self.apis.port}",
            "SQLADMIN_ENDPOINT": f"http://127.0.0.1:{self.apis.port}",
            "CONVEX_GCP_RUN_DIR": str(self.run_dir),
            "CONVEX_GCP_STATE_DIR": str(self.state_dir),
            "CONVEX_GCP_MOUNT_POINT": str(self.mount_point),
            "CONVEX_GCP_DATA_DEVICE": str(self.disk),
            "CONVEX_GCP_RETRY_BASE_MS": "10",
            "CONVEX_GCP_RETRY_MAX_MS": "80",
            "CONVEX_GCP_RETRY_ATTEMPTS": "4",
            "CONVEX_GCP_PROXY_READY_URL": f"http://127.0.0.1:{self.health.port}/readiness",
            "CONVEX_GCP_BACKEND_VERSION_URL": f"http://127.0.0.1:{self.health.port}/version",
            "CONVEX_GCP_PROXY_WAIT": "2",
            "CONVEX_GCP_BACKEND_WAIT": "2",
            "CONVEX_GCP_POLL_MS": "50",
            "CONVEX_GCP_WATCH_TIMEOUT": "5",
            "CONVEX_GCP_PENDING_RETRY": "1",
        }
        env.update(self.extra_env)
        return env

    def run(self, mode: str = "boot", timeout: float = 120, script: Path | None = None) -> Result:
        p = subprocess.run(["bash", str(script or SCRIPT), mode], env=self.env(), capture_output=True,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        return Result(p.returncode, p.stdout, p.stderr)

    def popen(self, mode: str) -> subprocess.Popen:
        """Start the script in the background in its own process group (see stop())."""
        return subprocess.Popen(["bash", str(SCRIPT), mode], env=self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                                start_new_session=True)

    @staticmethod
    def stop(proc: subprocess.Popen) -> str:
        """Stop a popen()ed script and its children (a parked curl long-poll); return its output."""
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        out, _ = proc.communicate(timeout=30)
        return out

    def reboot(self) -> None:
        """What a VM reboot resets: /run (tmpfs), mounts, transient units. Docker
        containers persist and come back by their restart policy."""
        shutil.rmtree(self.run_dir.parent, ignore_errors=True)
        self.run_dir.parent.mkdir(parents=True)
        (self.fake_root / "mounts.json").unlink(missing_ok=True)
        shutil.rmtree(self.fake_root / "units", ignore_errors=True)

    # ----------------------------------------------------------- records --
    def calls(self, tool: str | None = None) -> list[dict]:
        f = self.fake_root / "calls.jsonl"
        if not f.exists():
            return []
        out = [json.loads(line) for line in f.read_text().splitlines() if line]
        return [c for c in out if tool is None or c["tool"] == tool]

    def docker(self, sub: str | None = None) -> list[dict]:
        return [c for c in self.calls("docker") if sub is None or (c["argv"] and c["argv"][0] == sub)]

    def runs(self) -> list[str]:
        """Names of containers created by `docker run`, in order."""
        out = []
        for c in self.docker("run"):
            a = c["argv"]
            out.append(a[a.index("--name") + 1])
        return out

    def clear_calls(self) -> None:
        (self.fake_root / "calls.jsonl").unlink(missing_ok=True)
        with self.metadata.lock:
            self.metadata.requests.clear()
        with self.apis.lock:
            self.apis.requests.clear()
        with self.health.lock:
            self.health.requests.clear()

    def all_argv_text(self) -> str:
        return "\n".join(" ".join(c["argv"]) for c in self.calls())

    def secret_values(self) -> list[str]:
        vals = [self.instance_secret, self.db_password, TOKEN]
        vals += [v.decode() for v in self.apis.secrets.get(ADMIN_KEY_SECRET_ID, [])]
        return vals

    def close(self) -> None:
        for s in (self.metadata, self.apis, self.health):
            s.close()
