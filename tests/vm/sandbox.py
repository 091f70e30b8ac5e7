"""Sandbox that runs the REAL vm/startup.sh under bash against local fakes.

Used by the pytest suite (tests/vm) and by benchmarks/boot_bench.py.
Real: bash, curl, blkid, wipefs, dumpe2fs, mkfs.ext4, e2fsck, resize2fs, dd,
base64, sha256sum, flock, a file-backed disk image, and the metadata the
program renders (convex_gcp.runtime for the dev stack's settings: config,
env, systemd units). Fake (first on PATH): docker, systemctl, systemd-run,
mount, mountpoint, iptables. Fake HTTP on 127.0.0.1: metadata server, Secret
Manager + SQL Admin, proxy readiness + backend /version.

Sandbox.snapshot/restore copy what a finished run left (files, fake servers' records) into another
sandbox, so tests that start from the same first boot share one real boot (tests/vm/conftest.py).
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets as pysecrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

from fakes import fakebin  # noqa: E402
from fakes.google import TOKEN, ApisServer, HealthServer, MetadataServer  # noqa: E402

from convex_gcp import runtime  # noqa: E402
from convex_gcp.settings import Settings, load_settings  # noqa: E402
from tools.plan import stack_config  # noqa: E402

SCRIPT = REPO / "vm" / "startup.sh"
PROJECT = "test-proj"
INSTANCE_SECRET_ID = f"projects/{PROJECT}/secrets/convex-dev-instance-secret"
ADMIN_KEY_SECRET_ID = f"projects/{PROJECT}/secrets/convex-dev-admin-key"
DB_PASSWORD_SECRET_ID = f"projects/{PROJECT}/secrets/convex-dev-db-password"
CONNECTION_NAME = "test-proj:europe-west1:convex-db"
GRANT_ACCOUNT = f"convex-dev-sqlgrant@{PROJECT}.iam.gserviceaccount.com"
EXPORT_BUCKET = "convex-dev-exports-a1b2c3"
# The program's own settings for the dev stack (Pulumi.dev.yaml), as `pulumi up` would load them.
SETTINGS: Settings = load_settings(stack_config("dev"), "dev")
SHA = SETTINGS.convex.version
PROXY_IMAGE = runtime.PROXY_IMAGE.format(tag=SETTINGS.convex.proxy_version)
BACKEND_IMAGE = runtime.BACKEND_IMAGE.format(tag=SHA)
DASHBOARD_IMAGE = runtime.DASHBOARD_IMAGE.format(tag=SHA)
render_env = runtime.render_env
# The watcher's long-poll timeout_sec is whole seconds; in the sandbox one of them lasts 50 ms.
METADATA_SECOND = 0.05


tool_server = fakebin.server

# vm/isolate.sh's chains, whole and in order, as `iptables -S` spells them (tests/vm/test_isolation.py
# checks the spelling against the real iptables).
_MD, _REJECT = "169.254.169.254/32", "-j REJECT --reject-with icmp-port-unreachable"
HOST_RULES = [
    "-m owner --uid-owner 0 -j RETURN",
    "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
    f"-d {_MD} -p udp -m udp --dport 53 -j RETURN",
    f"-d {_MD} -p tcp -m tcp --dport 53 -j RETURN",
    f"-d {_MD} {_REJECT}",
    f"-o cvx-+ {_REJECT}",
]
FORWARD_RULES = [
    f"-d {_MD} -i cvx-proxy -j RETURN",
    f"-d {_MD} -p udp -m udp --dport 53 -j RETURN",
    f"-d {_MD} -p tcp -m tcp --dport 53 -j RETURN",
    f"-d {_MD} {_REJECT}",
    "-i cvx-db -o cvx-proxy -p tcp -m tcp --dport 5432 -j ACCEPT",
    "-i cvx-proxy -o cvx-db -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    "-o cvx-proxy -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
    f"-o cvx-proxy {_REJECT}",
]


def data_mounts(sb: "Sandbox") -> list[dict]:
    """The data disk's mount calls (not the /proc remount vm/isolate.sh makes)."""
    return [c for c in sb.calls("mount") if not any(a.startswith("remount,") for a in c["argv"])]


def inputs(**changes) -> runtime.RuntimeInputs:
    values = dict(project=PROJECT, connection_name=CONNECTION_NAME, public_host="34.1.2.3",
                  database_user="convex", instance_secret_id=INSTANCE_SECRET_ID,
                  admin_key_secret_id=ADMIN_KEY_SECRET_ID, db_password_secret_id=DB_PASSWORD_SECRET_ID,
                  sql_dns_name="abc123.def456.europe-west1.sql-psa.goog", sql_private_ip="10.30.0.5",
                  export_bucket=EXPORT_BUCKET)
    values.update(changes)
    return runtime.RuntimeInputs(**values)


def wait_for(condition, timeout: float = 30.0) -> bool:
    """Poll a condition (the script runs in the background) until it holds or the timeout passes.
    The timeout only bounds a hang; a passing test never waits for it."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


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
        self.unit_dir = tmp / "etc" / "systemd" / "system"  # /etc is a tmpfs on COS: reset by reboot()
        self.etc = tmp / "etc"  # its group file: vm/isolate.sh adds the group /proc's hidepid exempts
        for d in (self.bin, self.fake_root, self.run_dir.parent):
            d.mkdir(parents=True, exist_ok=True)
        tool_server().install(self.bin, list(fakebin.TOOLS))
        self.fresh_etc_and_proc()
        if make_disk:
            with open(self.disk, "xb") as image:  # a sparse image, as `truncate -s` makes (ftruncate(2))
                image.truncate(disk_mb << 20)

        self.instance_secret = pysecrets.token_hex(32)
        self.db_password = "Pw" + pysecrets.token_hex(12)
        self.settings = SETTINGS
        self.inputs = inputs()
        self.render()
        self.metadata = MetadataServer(self._attributes())
        self.metadata.second = METADATA_SECOND
        self.apis = ApisServer(self.metadata.tokens)
        self.apis.add_secret(INSTANCE_SECRET_ID, self.instance_secret.encode())
        self.apis.add_secret(ADMIN_KEY_SECRET_ID)
        self.apis.add_secret(DB_PASSWORD_SECRET_ID, self.db_password.encode())
        # What bootstrap/bootstrap.sh grants: the VM account may mint the grant account's tokens.
        self.apis.actable.add(GRANT_ACCOUNT)
        self.health = HealthServer(self.fake_root / "docker.json")
        self.extra_env: dict[str, str] = {}
        # True: no timing seam at all (every CONVEX_GCP_*_MS, the retry count, the token margin, the
        # long-poll timeout): the script's shipped defaults run, against fakes that take time to answer.
        self.shipped_defaults = False
        self.script_suffix = ""  # appended to the served startup-script (simulates a new version)

    # ------------------------------------------------------------ config --
    def render(self, settings: Settings | None = None, **input_changes) -> None:
        """The metadata convex_gcp.runtime renders for these settings; tests then edit the dicts."""
        if settings is not None:
            self.settings = settings
        if input_changes:
            self.inputs = inputs(**input_changes)
        self.config = runtime.vm_config(self.settings, self.inputs)
        self.backend_env = runtime.backend_env(self.settings, self.inputs)
        self.dashboard_env = runtime.dashboard_env(self.settings, self.inputs)

    def fresh_etc_and_proc(self) -> None:
        """What a COS boot starts with: /etc/group without convex-proc, /proc mounted without hidepid
        (the sandbox's /proc/self/mountinfo, which the fake `mount -o remount` edits)."""
        self.etc.mkdir(parents=True, exist_ok=True)
        (self.etc / "group").write_text("root:x:0:\ndocker:x:412:\nsystemd-journal:x:999:\n")
        (self.fake_root / "mountinfo").write_text(
            "22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw\n"
            "23 1 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n")
        # The environment the fake systemd runs a unit's `bash FILE` lines in (fakebin.run_script).
        (self.fake_root / "unit-env.json").write_text(json.dumps({k: v for k, v in self.isolation_env().items()}))

    def isolation_env(self) -> dict[str, str]:
        return {"PATH": f"{self.bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "FAKE_ROOT": str(self.fake_root), "CONVEX_GCP_UNIT_DIR": str(self.unit_dir),
                "CONVEX_GCP_MOUNTINFO": str(self.fake_root / "mountinfo"), "CONVEX_GCP_ETC": str(self.etc)}

    def _attributes(self) -> dict[str, str]:
        attrs = runtime.instance_metadata(self.settings, self.inputs,
                                          SCRIPT.read_text() + getattr(self, "script_suffix", ""))
        # What a test edited in the dicts wins; units follow the (edited) config like in the program.
        attrs["convex-gcp-config"] = render_env(self.config)
        attrs["convex-backend-env"] = render_env(self.backend_env)
        attrs.pop("convex-dashboard-env", None)
        if self.dashboard_env and self.config.get("DASHBOARD_ENABLED") == "true":
            attrs["convex-dashboard-env"] = render_env(self.dashboard_env)
        for key in [k for k in attrs if k.startswith("convex-gcp-unit-")]:
            del attrs[key]
        for name, text in runtime.units_for_config(self.config).items():
            attrs[f"convex-gcp-unit-{name}"] = text
        return attrs

    def use_ssl(self, server_cas: list[str], host: str = "abc123.def456.europe-west1.sql-psa.goog") -> None:
        """Render connectionMode ssl with convex_gcp.runtime, and serve these CA PEMs."""
        self.render(self.settings.model_copy(update={"connection_mode": "ssl"}), sql_dns_name=host)
        self.apis.server_cas = list(server_cas)
        self.publish()

    def use_proxy(self) -> None:
        self.render(self.settings.model_copy(update={"connection_mode": "proxy"}))
        self.publish()

    def publish(self) -> None:
        """Push the current config/env dicts to the metadata server (like `pulumi up`)."""
        attrs = self._attributes()
        with self.metadata.cond:
            self.metadata.attributes = attrs
            self.metadata.cond.notify_all()

    def database_down(self) -> None:
        """Cloud SQL unreachable from the proxy and the backend. The boot then waits out its readiness
        bounds: 150 ms each here (400 ms by default in the sandbox) is ample for fakes that answer at
        once when the database is up."""
        self.health.db_up = False
        self.extra_env.update(CONVEX_GCP_PROXY_WAIT_MS="150", CONVEX_GCP_BACKEND_WAIT_MS="150")

    def database_up(self) -> None:
        """Cloud SQL reachable again; the readiness bounds back to the sandbox's (a backend that waited
        for the database answers its start time after it is back: fakes/convex.py)."""
        self.health.db_up = True
        for key in ("CONVEX_GCP_PROXY_WAIT_MS", "CONVEX_GCP_BACKEND_WAIT_MS"):
            self.extra_env.pop(key, None)

    def docker_state(self) -> dict:
        f = self.fake_root / "docker.json"
        return fakebin.settle(json.loads(f.read_text())) if f.exists() else {}  # timelines played up to now

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
            "IAMCREDENTIALS_ENDPOINT": f"http://127.0.0.1:{self.apis.port}",
            "CONVEX_GCP_RUN_DIR": str(self.run_dir),
            "CONVEX_GCP_STATE_DIR": str(self.state_dir),
            "CONVEX_GCP_MOUNT_POINT": str(self.mount_point),
            "CONVEX_GCP_DATA_DEVICE": str(self.disk),
            "CONVEX_GCP_RETRY_BASE_MS": "10",
            "CONVEX_GCP_RETRY_MAX_MS": "80",
            "CONVEX_GCP_RETRY_ATTEMPTS": "4",
            "CONVEX_GCP_PROXY_READY_URL": f"http://127.0.0.1:{self.health.port}/readiness",
            "CONVEX_GCP_BACKEND_VERSION_URL": f"http://127.0.0.1:{self.health.port}/version",
            "CONVEX_GCP_PROXY_WAIT_MS": "400",
            "CONVEX_GCP_BACKEND_WAIT_MS": "400",
            "CONVEX_GCP_POLL_MS": "50",
            "CONVEX_GCP_WATCH_TIMEOUT": "5",  # whole seconds, as the metadata API takes them; see METADATA_SECOND
            "CONVEX_GCP_PENDING_RETRY_MS": "100",
            "CONVEX_GCP_UNIT_DIR": str(self.unit_dir),
            "CONVEX_GCP_TOKEN_MARGIN": "0",
            "CONVEX_GCP_SQL_PROBE_ADDR": f"127.0.0.1:{self.health.port}",
            "CONVEX_GCP_MOUNTINFO": str(self.fake_root / "mountinfo"),
            "CONVEX_GCP_ETC": str(self.etc),
            "CONVEX_GCP_OUTAGE_RETRY_MS": "200",
            "CONVEX_GCP_UPGRADE_DEADLINE_MS": "1000",  # vm/convex-upgrade.sh: rollback deadline
        }
        env.update(self.extra_env)
        if self.shipped_defaults:
            timing = ("CONVEX_GCP_RETRY_ATTEMPTS", "CONVEX_GCP_TOKEN_MARGIN", "CONVEX_GCP_WATCH_TIMEOUT")
            env = {k: v for k, v in env.items() if not (k.startswith("CONVEX_GCP_") and k.endswith("_MS")) and k not in timing}
        return env

    def run_env(self) -> dict[str, str]:
        """The environment of a run; the fake systemd starts script units (the upgrade guard) in it."""
        env = self.env()
        (self.fake_root / "env.json").write_text(json.dumps(env))
        return env

    def run(self, mode: str = "boot", timeout: float = 120, script: Path | None = None) -> Result:
        p = subprocess.run(["bash", str(script or SCRIPT), mode], env=self.run_env(), capture_output=True,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        return Result(p.returncode, p.stdout, p.stderr)

    def popen(self, mode: str) -> subprocess.Popen:
        """Start the script in the background in its own process group (see stop())."""
        return subprocess.Popen(["bash", str(SCRIPT), mode], env=self.run_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                                start_new_session=True)

    def guard_log(self) -> str:
        """What the upgrade guard unit (vm/convex-upgrade.sh, started by the fake systemd) printed."""
        f = self.fake_root / "convex-upgrade.service.log"
        return f.read_text() if f.exists() else ""

    def wait_units(self, timeout: float = 60.0) -> bool:
        """Wait until the script units the fake systemd started (the upgrade guard) have ended."""
        return fakebin.wait_procs(str(self.fake_root), timeout)

    def stop(self, proc: subprocess.Popen) -> str:
        """Stop a popen()ed script and its children (a parked curl long-poll); return its output once
        the stand-in calls it had started are done."""
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        out, _ = proc.communicate(timeout=30)
        assert tool_server().wait_idle(str(self.fake_root)), "a stand-in call of the stopped script did not finish"
        return out

    def reboot(self) -> None:
        """What a COS reboot resets: /run and /etc (tmpfs: units gone), /mnt/disks (tmpfs: the mount
        point is empty again), systemd state, iptables rules. Docker state persists; dockerd drops
        --rm containers and restarts --restart always ones (fakebin.daemon_restart)."""
        assert tool_server().wait_idle(str(self.fake_root)), "a stand-in call is still running"
        fakebin.kill(str(self.fake_root))
        shutil.rmtree(self.run_dir.parent, ignore_errors=True)
        self.run_dir.parent.mkdir(parents=True)
        shutil.rmtree(self.unit_dir, ignore_errors=True)
        shutil.rmtree(self.mount_point.parent, ignore_errors=True)
        for f in ("mounts.json", "systemd.json", "iptables.json"):
            (self.fake_root / f).unlink(missing_ok=True)
        self.fresh_etc_and_proc()
        shutil.rmtree(self.fake_root / "units", ignore_errors=True)
        with fakebin.context(self.fake_root, self.unit_dir):
            fakebin.daemon_restart()

    # ----------------------------------------------------------- records --
    def calls(self, tool: str | None = None) -> list[dict]:
        f = self.fake_root / "calls.jsonl"
        if not f.exists():
            return []
        out = [json.loads(line) for line in f.read_text().splitlines() if line]
        return [c for c in out if tool is None or c["tool"] == tool]

    def docker(self, sub: str | None = None) -> list[dict]:
        return [c for c in self.calls("docker") if sub is None or (c["argv"] and c["argv"][0] == sub)]

    def systemctl(self, *args: str) -> subprocess.CompletedProcess:
        """Ask the fake systemd something (for a unit in auto-restart, time passes: it restarts)."""
        return subprocess.run([str(self.bin / "systemctl"), *args], env=self.env(), capture_output=True, text=True)

    def units(self) -> dict:
        f = self.fake_root / "systemd.json"
        return json.loads(f.read_text())["units"] if f.exists() else {}

    def iptables_rules(self, chain: str = "DOCKER-USER") -> list[str]:
        f = self.fake_root / "iptables.json"
        return json.loads(f.read_text()).get(chain, []) if f.exists() else []

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
        vals = [self.instance_secret, self.db_password, TOKEN, *self.metadata.tokens.issued]
        vals += [v.decode() for v in self.apis.secrets.get(ADMIN_KEY_SECRET_ID, [])]
        vals += list(self.apis.acted_tokens)
        return vals

    # ---------------------------------------------------------- snapshot --
    def snapshot(self, result: Result) -> Snapshot:
        """What a finished run left behind: the sandbox's files and what the fake servers hold. Tests
        that start from the same first boot restore it instead of booting again (conftest `booted`)."""
        assert self.wait_units(), "the upgrade guard did not end"
        assert tool_server().wait_idle(str(self.fake_root)), "a stand-in call is still running"
        servers = self._servers()
        state = {name: copy.deepcopy({k: v for k, v in vars(server).items() if k in _SERVER_STATE})
                 for name, server in servers.items()}
        state["tokens"] = copy.deepcopy({k: getattr(self.metadata.tokens, k) for k in ("issued", "revoked", "current")})
        return Snapshot(self.tmp, {name: server.port for name, server in servers.items()}, result, state,
                        self.instance_secret, self.db_password)

    def restore(self, snap: Snapshot) -> Result:
        """Become the sandbox the snapshot was taken of, as if this sandbox had made that run: its files
        (paths and fake-server ports rewritten to this sandbox's), the fake servers' secrets, tokens and
        request logs, and the run's output. Settings and inputs must be the ones the snapshot used."""
        assert not self.calls() and not self.metadata.requests, "restore() comes before this sandbox's own runs"
        assert self._attributes() == snap.state["metadata"]["attributes"], \
            "restore() needs the settings the snapshot was made with: change them after restoring"
        entries = [e for e in sorted(snap.root.iterdir()) if e.name != "bin"]  # bin: this sandbox's own clients
        for entry in entries:
            target = self.tmp / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        # cp keeps modes, times and the disk image's holes (a 64 MB image holds a few MB of ext4).
        subprocess.run(["cp", "-a", "--sparse=always", *map(str, entries), str(self.tmp)], check=True)
        servers = self._servers()
        moves = {str(snap.root): str(self.tmp),
                 **{f"127.0.0.1:{snap.ports[name]}": f"127.0.0.1:{server.port}" for name, server in servers.items()}}
        pattern = re.compile("|".join(re.escape(old) for old in sorted(moves, key=len, reverse=True)))

        def rewrite(text: str) -> str:
            return pattern.sub(lambda m: moves[m.group(0)], text)

        for path in self.tmp.rglob("*"):
            if path.is_file() and not path.is_symlink() and path != self.disk and self.bin not in path.parents:
                text = path.read_bytes().decode(errors="surrogateescape")
                if pattern.search(text):
                    stat = path.stat()
                    path.write_bytes(rewrite(text).encode(errors="surrogateescape"))
                    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        for name, server in servers.items():
            with server.lock:
                for key, value in copy.deepcopy(snap.state[name]).items():
                    setattr(server, key, value)
        with self.metadata.tokens.lock:
            for key, value in copy.deepcopy(snap.state["tokens"]).items():
                setattr(self.metadata.tokens, key, value)
        self.instance_secret, self.db_password = snap.instance_secret, snap.db_password
        return Result(snap.result.rc, rewrite(snap.result.stdout), rewrite(snap.result.stderr))

    def _servers(self) -> dict[str, MetadataServer | ApisServer | HealthServer]:
        return {"metadata": self.metadata, "apis": self.apis, "health": self.health}

    def close(self) -> None:
        fakebin.kill(str(self.fake_root))
        for server in self._servers().values():
            server.close()


# What a run changes in the fake servers (their knobs are the test's to set; requests are the record).
_SERVER_STATE = ("attributes", "requests", "secrets", "acted_tokens", "executed")


@dataclass
class Snapshot:
    root: Path
    ports: dict[str, int]
    result: Result
    state: dict
    instance_secret: str
    db_password: str
