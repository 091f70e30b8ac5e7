"""The world of one host-tier session (World: engine, registry, images, "Google", PostgreSQL) and the
VMs booted in it (Vm: a container of the VM image with a loop-device data disk, the metadata the
program renders for the dev stack, and fresh metadata and Secret Manager fakes)."""

from __future__ import annotations

import json
import os
import secrets as pysecrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.host import machine
from tests.host.machine import (BACKEND_REPO, DASHBOARD_REPO, GCE_NETNS, GOOGLE_APIS_IP, METADATA_IP, PROXY_REPO,
                                REGISTRY_IP, SQL_IP, SQL_PORT, VM_IP, Engine, Gce, Images, Registry, run)

sys.path.insert(0, str(machine.REPO / "tests" / "vm"))
from fakes.google import ApisServer, MetadataServer  # noqa: E402  (tests/vm/fakes: the fast sandbox's fakes)

from convex_gcp import db_grants, runtime  # noqa: E402
from convex_gcp.settings import Settings, load_settings, resource_prefix  # noqa: E402
from tools.plan import stack_config  # noqa: E402

SCRIPT = machine.REPO / "vm" / "startup.sh"
PROJECT = "test-proj"
CONNECTION_NAME = "test-proj:asia-northeast1:convex-db"
INSTANCE_SECRET_ID = f"projects/{PROJECT}/secrets/convex-dev-instance-secret"
ADMIN_KEY_SECRET_ID = f"projects/{PROJECT}/secrets/convex-dev-admin-key"
DB_PASSWORD_SECRET_ID = f"projects/{PROJECT}/secrets/convex-dev-db-password"
SETTINGS: Settings = load_settings(stack_config("dev"), "dev")
DATABASE = SETTINGS.convex.instance_name.replace("-", "_")
# IAM database logins (the dev stack's iamAuth: true): the VM account's and the grant account's database
# users, named as Cloud SQL names a service account's (email without ".gserviceaccount.com").
VM_DB_ROLE = f"convex-dev-vm@{PROJECT}.iam"
GRANT_ACCOUNT = db_grants.grant_account_email(resource_prefix("dev"), PROJECT)
GRANT_DB_ROLE = GRANT_ACCOUNT.removesuffix(".gserviceaccount.com")


class Postgres:
    """A real PostgreSQL on the host's loopback: "Cloud SQL", reached by the VM at SQL_IP:SQL_PORT, with
    the roles Cloud SQL has once the program ran (tests/doctor/test_db_grants.py `prepare`)."""

    def __init__(self) -> None:
        from tests.doctor.conftest import _as_owner, _bin, initdb

        self._as_owner, self._bin = _as_owner, _bin
        self.root = Path(tempfile.mkdtemp(prefix="convex-gcp-host-pg-"))
        shutil.chown(self.root, "postgres")
        os.chmod(self.root, 0o755)
        self.port = machine._free_port()
        self.data = self.root / "data"
        initdb(self.data)
        with open(self.data / "postgresql.conf", "a") as handle:
            handle.write(f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.root}'\n"
                         "password_encryption = 'scram-sha-256'\n")
        # Cloud SQL checks an IAM login's password, the OAuth token the proxy sends with --auto-iam-authn
        # (https://cloud.google.com/sql/docs/postgres/iam-logins, "Log in with automatic IAM database
        # authentication"), before PostgreSQL sees it; this PostgreSQL takes the IAM role's login as given (the
        # token check is not modelled: the stand-in proxy forwards bytes). Built-in users log in with their password.
        # The local socket is the test's own (admin) and the Data API fake's (the account it acted as).
        (self.data / "pg_hba.conf").write_text(f'local all all trust\nhost all "{VM_DB_ROLE}" 127.0.0.1/32 trust\n'
                                               "host all all 127.0.0.1/32 scram-sha-256\n")
        run(*_as_owner([_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "pg.log"), "-w", "start"]))
        self.sql("CREATE ROLE cloudsqlsuperuser NOLOGIN CREATEDB CREATEROLE")
        self.sql(f"CREATE ROLE {db_grants.quote_ident(GRANT_DB_ROLE)} LOGIN IN ROLE cloudsqlsuperuser")

    def sql(self, statement: str, database: str = "postgres", user: str = "admin") -> str:
        return run(*self._as_owner(["psql", "-h", str(self.root), "-p", str(self.port), "-U", user, "-d", database,
                                    "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", statement])).stdout.strip()

    def fresh(self, role: str, password: str | None) -> None:
        """An empty database for Convex and its role, as the program creates them on Cloud SQL: the
        database owned by cloudsqlsuperuser, the role with no privileges until the VM's grant step
        (IAM login), or the built-in password user the program makes a member of cloudsqlsuperuser."""
        self.sql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        for name in ("convex", VM_DB_ROLE):
            self.sql(f"DROP ROLE IF EXISTS {db_grants.quote_ident(name)}")
        login = f"LOGIN PASSWORD {db_grants.quote_literal(password)} IN ROLE cloudsqlsuperuser" if password else "LOGIN"
        self.sql(f"CREATE ROLE {db_grants.quote_ident(role)} {login}")
        self.sql(f"CREATE DATABASE {DATABASE} OWNER cloudsqlsuperuser")
        if not password:
            # The VM's grant step is what lets the IAM role create Convex's tables: PostgreSQL 15+ grants
            # PUBLIC no CREATE on schema public (on 14 and older it would, and the step would prove nothing).
            held = self.sql(f"SELECT has_schema_privilege({db_grants.quote_literal(role)}, 'public', 'CREATE')", DATABASE)
            assert held == "f", f"{role} can already create in public ({held}): PostgreSQL 15 or later is needed"

    def execute_sql(self, sql: str, database: str, account: str) -> str | None:
        """The Data API's executeSql (tests/vm/fakes/google.py ApisServer.execute_sql): the statement runs
        as the caller's IAM database user (autoIamAuthn); a failure is the database's error text."""
        try:
            self.sql(sql, database, user=account.removesuffix(".gserviceaccount.com"))
        except RuntimeError as error:  # machine.run: the command, its exit status and psql's error
            return str(error).strip()
        return None

    def close(self) -> None:
        run(*self._as_owner([self._bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]), check=False)
        shutil.rmtree(self.root, ignore_errors=True)


class World:
    """Everything a session's VMs share; built once (the slow parts are cached across sessions)."""

    def __init__(self) -> None:
        self.engine = Engine()
        self.registry = self.gce = self.postgres = None
        try:
            self.engine.up()
            self.vm_image = machine.vm_image(self.engine)
            self.registry = Registry()
            self.images = Images(self.registry)
            self.postgres = Postgres()
            self.gce = Gce()
            self.gce.listen(METADATA_IP, 80, 1)  # retargeted to each VM's fakes
            self.gce.listen(GOOGLE_APIS_IP, 443, 1, tls=True)
            self.gce.listen(REGISTRY_IP, 443, self.registry.port, tls=True)
            self.gce.listen(SQL_IP, SQL_PORT, self.postgres.port)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for part in (self.gce, self.postgres, self.registry):
            if part is not None:
                part.close()
        self.engine.down()


class Vm:
    """One VM: `boot()` creates and starts it, `reboot()` restarts the container on the same disk."""

    NAME = "convex-gcp-host-vm"

    def __init__(self, world: World, tmp: Path, disk_mb: int = 512, extra_disks: tuple[str, ...] = (),
                 iam_auth: bool = True) -> None:
        self.world, self.engine, self.tmp = world, world.engine, tmp
        self.disk = tmp / "disk.img"
        self.loop = self._loop(self.disk, disk_mb)
        self.docker_dir = tmp / "var-lib-docker"
        self.docker_dir.mkdir()
        # device_name -> (image file, loop device): disks attached from the start (a container's devices
        # are fixed when it is created); a test writes a snapshot's bytes into one to "create it from" it.
        self.extra = {name: (tmp / f"{name}.img", self._loop(tmp / f"{name}.img", disk_mb)) for name in extra_disks}
        # The dev stack as shipped logs in with IAM; iam_auth=False is a stack with a database password.
        self.settings = SETTINGS if iam_auth else SETTINGS.model_copy(update={"iam_auth": False})
        self.db_password = "" if iam_auth else "Pw" + pysecrets.token_hex(12)
        database_user = VM_DB_ROLE if iam_auth else "convex"
        world.postgres.fresh(database_user, self.db_password or None)
        self.images = {"BACKEND_IMAGE": world.images.image(BACKEND_REPO),
                       "DASHBOARD_IMAGE": world.images.image(DASHBOARD_REPO),
                       "PROXY_IMAGE": world.images.image(PROXY_REPO)}
        self.inputs = runtime.RuntimeInputs(
            project=PROJECT, connection_name=CONNECTION_NAME, public_host="34.1.2.3", database_user=database_user,
            instance_secret_id=INSTANCE_SECRET_ID, admin_key_secret_id=ADMIN_KEY_SECRET_ID,
            db_password_secret_id="" if iam_auth else DB_PASSWORD_SECRET_ID, sql_private_ip=SQL_IP, pinned_images=self.images)
        self.config = runtime.vm_config(self.settings, self.inputs)
        self.backend_env = runtime.backend_env(self.settings, self.inputs)
        self.dashboard_env = runtime.dashboard_env(self.settings, self.inputs)
        self.metadata = MetadataServer(self.attributes())
        self.apis = ApisServer(self.metadata.tokens)
        self.apis.add_secret(INSTANCE_SECRET_ID)  # no version: the first boot mints it
        self.apis.add_secret(ADMIN_KEY_SECRET_ID)
        if not iam_auth:
            self.apis.add_secret(DB_PASSWORD_SECRET_ID, self.db_password.encode())
        # bootstrap/bootstrap.sh lets the VM account mint the grant account's tokens; the grants it sends
        # run on the real PostgreSQL as that account.
        self.apis.actable.add(GRANT_ACCOUNT)
        self.apis.execute_sql = world.postgres.execute_sql
        world.gce.retarget(METADATA_IP, 80, self.metadata.port)
        world.gce.retarget(GOOGLE_APIS_IP, 443, self.apis.port)
        self.created = False
        self.boots = 0
        self.since = 0.0
        # Test seams of vm/startup.sh for this VM's startup-script runs (the runner's EnvironmentFile;
        # the watcher's runs inherit them): empty, every default is production's.
        self.script_env: dict[str, str] = {}
        # unit -> Environment= of a drop-in in /usr/lib/systemd/system/<unit>.service.d (outside the
        # tmpfs /etc, so it holds across reboots): seams of the scripts units run, e.g. the upgrade
        # guard's deadline. Written at boot().
        self.unit_env: dict[str, dict[str, str]] = {}

    @staticmethod
    def _loop(image: Path, mb: int) -> str:
        with open(image, "xb") as handle:
            handle.truncate(mb << 20)
        return run("losetup", "--find", "--show", str(image)).stdout.strip()

    def snapshot(self, to: Path) -> None:
        """A crash-consistent copy of the data disk, as a snapshot of a running VM's disk is."""
        self.sh("sync", check=True)
        run("cp", "--sparse=always", str(self.disk), str(to))

    def restore_into(self, name: str, snapshot: Path) -> None:
        """`gcloud compute disks create NAME --source-snapshot=...`: the extra disk now holds the snapshot."""
        image, loop = self.extra[name]
        run("dd", f"if={snapshot}", f"of={image}", "bs=1M", "conv=notrunc,sparse", "status=none")
        run("blockdev", "--flushbufs", loop)

    # ------------------------------------------------------------ metadata --
    def attributes(self) -> dict[str, str]:
        attrs = runtime.instance_metadata(self.settings, self.inputs, SCRIPT.read_text())
        attrs["convex-gcp-config"] = runtime.render_env(self.config)
        attrs["convex-backend-env"] = runtime.render_env(self.backend_env)
        for key in [k for k in attrs if k.startswith("convex-gcp-unit-")]:
            del attrs[key]
        for name, text in runtime.units_for_config(self.config).items():
            attrs[f"convex-gcp-unit-{name}"] = text
        return attrs

    def publish(self) -> None:
        """`pulumi up` of the current config: the metadata server's attributes change (a new ETag)."""
        with self.metadata.cond:
            self.metadata.attributes = self.attributes()
            self.metadata.cond.notify_all()

    # ------------------------------------------------------------ lifecycle --
    def boot(self, wait: bool = True) -> str:
        """Create and start the VM; returns the first boot's startup-script journal once it ended (or at
        once, without waiting)."""
        # The VM's own name resolves, as GCE's DNS answers it (sudo looks it up).
        hosts = [f"--add-host={name}:{ip}" for name, ip in {**machine.HOSTS, "convex-vm": VM_IP}.items()]
        env_file = self.tmp / "google-startup-scripts.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in self.script_env.items()))
        dropins = []
        for unit, env in self.unit_env.items():
            d = self.tmp / "dropins" / f"{unit}.service.d"
            d.mkdir(parents=True, exist_ok=True)
            (d / "host-tier.conf").write_text("[Service]\n" + "".join(f"Environment={k}={v}\n" for k, v in env.items()))
            dropins.append(f"--volume={d}:/usr/lib/systemd/system/{unit}.service.d:ro")
        self.engine(
            "create", "--name", self.NAME, "--hostname", "convex-vm", "--network", "none",
            "--cap-add", "SYS_ADMIN", "--cap-add", "NET_ADMIN", "--security-opt", "seccomp=unconfined",
            "--cgroupns", "host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup",
            "--tmpfs", "/run:rw,exec,mode=755", "--tmpfs", "/run/lock", "--tmpfs", "/tmp:rw,noexec,nosuid,nodev",
            # /etc and /mnt/disks are tmpfs on COS: units installed by the script, and the mount point, are
            # gone at a reboot.
            "--tmpfs", "/etc/systemd/system:rw,mode=755", "--tmpfs", "/mnt/disks:rw,mode=755",
            "--device", f"{self.loop}:{machine.DATA_DEVICE}",
            *(f"--device={loop}:/dev/disk/by-id/google-{name}" for name, (_, loop) in self.extra.items()),
            "--stop-signal", "SIGRTMIN+3", "--stop-timeout", "180",
            "-v", f"{env_file}:/etc/default/google-startup-scripts:ro", *dropins,
            # The inner engine's storage (persistent, as /var/lib/docker is on COS) in the test's scratch
            # directory: vfs copies are made and removed there, not in the outer engine's container layer.
            "-v", f"{self.docker_dir}:/var/lib/docker",
            *(f"--volume={machine.VM_FILES / path}:/{path}:ro" for path in machine.VM_FILE_PATHS),
            "-e", "container=docker", *hosts, self.world.vm_image)
        self.created = True
        return self._start(wait)

    def _start(self, wait: bool = True) -> str:
        # The journal is kept across reboots and the container shares the host's boot ID, so `journalctl -b`
        # would show every boot: "this boot" is what was logged since this start (same clock as the host).
        self.since = time.time()
        self.engine("start", self.NAME)
        pid = int(self.engine("inspect", "--format", "{{.State.Pid}}", self.NAME).stdout)
        self.world.gce.plug(pid, "gce-vm0")
        self.boots += 1
        return self.wait_boot() if wait else ""

    def reboot(self) -> str:
        """A reset: the container stops (systemd shuts down, as on a reboot) and starts on the same disk."""
        self.engine("stop", "-t", "180", self.NAME, timeout=300)
        return self._start()

    def guest_reboot(self, command: str = "systemctl reboot", timeout: float = 300) -> str:
        """A reboot from inside (`sudo systemctl reboot`): systemd stops every unit and, in a container,
        exits (the container stops); Compute Engine starts the VM again, so the test starts it on the same disk."""
        self.sh(command, timeout=60)
        self.wait_for(lambda: self.engine("inspect", "--format", "{{.State.Running}}", self.NAME).stdout.strip() == "false",
                      timeout, "the VM to stop after systemctl reboot")
        return self._start()

    def wait_boot(self, timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            journal = self.journal("google-startup-scripts")
            if "Finished running startup scripts." in journal:
                return journal
            time.sleep(1)
        raise AssertionError(f"the startup script did not finish in {timeout} s:\n{self.journal('google-startup-scripts')[-5000:]}")

    def close(self) -> None:
        if self.created:
            self.engine("rm", "-f", "-v", self.NAME, check=False, timeout=600)
        shutil.rmtree(self.docker_dir, ignore_errors=True)
        for loop in [self.loop, *(loop for _, loop in self.extra.values())]:
            run("losetup", "-d", loop, check=False)
        self.metadata.close()
        self.apis.close()

    # ------------------------------------------------------------ observing --
    def sh(self, command: str, check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
        """A root shell command on the VM (what `gcloud compute ssh ... --command=` runs)."""
        return self.engine("exec", self.NAME, "bash", "-c", command, check=check, timeout=timeout)

    def journal(self, unit: str, boot: bool = True) -> str:
        since = f"--since @{self.since:.6f} " if boot else ""
        return self.sh(f"journalctl {since}-u {unit} --no-pager -o cat").stdout

    def logs(self, container: str) -> str:
        """A container's output (`docker logs`: the units keep it out of the journal)."""
        p = self.sh(f"docker logs {container} 2>&1")
        return p.stdout

    def state(self, unit: str) -> str:
        return self.sh(f"systemctl is-active {unit}").stdout.strip()

    def show(self, unit: str, prop: str) -> str:
        return self.sh(f"systemctl show -p {prop} --value {unit}").stdout.strip()

    def curl(self, path: str, port: int = 3210, timeout: float = 10) -> tuple[int, str]:
        """What a user gets from the VM's published port, from outside it (through its NIC)."""
        return self.world.gce.curl(f"http://{VM_IP}:{port}{path}", timeout)

    def wait_for(self, condition, timeout: float = 180, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout} s")
            time.sleep(1)

    def reconciles(self) -> int:
        """How many runs the config watcher finished (or that exited non-zero) this boot."""
        journal = self.journal("convex-config-watch")
        return journal.count("reconcile finished") + journal.count("reconcile exited")

    def apply(self, timeout: float = 300, **config: str) -> str:
        """`pulumi up` with these convex-gcp-config values; returns the watcher's journal once it ran
        the reconcile the change triggered."""
        before = self.reconciles()
        self.config.update(config)
        self.publish()
        self.wait_for(lambda: self.reconciles() > before, timeout, "the watcher's reconcile")
        return self.journal("convex-config-watch")

    def container_id(self, name: str) -> str:
        """The running container of that name, or "" (between a unit's `docker rm -f` and `docker run`)."""
        return self.sh(f"docker ps -q --no-trunc --filter name=^{name}$").stdout.strip()

    def container_env(self, name: str) -> list[str]:
        out = self.sh(f"docker inspect --format '{{{{json .Config.Env}}}}' {name}").stdout
        return json.loads(out) if out.strip() else []

    def wait_version(self, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code, body = self.curl("/version")
            if code == 200:
                return body
            time.sleep(1)
        raise AssertionError(f"/version did not answer within {timeout} s")


__all__ = ["World", "Vm", "GCE_NETNS"]
