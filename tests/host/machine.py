"""The host tier's machine: "the VM" is a container running Debian bookworm's systemd as PID 1 with a
Docker engine inside, on a Docker engine of the test's own (Debian's docker.io, vfs storage), and the
real vm/startup.sh and vm/units run in it. See tests/host/README.md for the layout and the differences
from Container-Optimized OS.

- Root file systems come from debootstrap (Debian's packages), cached under CACHE keyed by their package
  list and what is written into them; the VM's is imported into the outer engine once per key.
- Stand-in images (tests/host/standins) are assembled here from a debootstrap layer and a layer of the
  stand-in scripts and pushed to a local registry (Debian's docker-registry) with the registry's HTTP
  API, so the VM pulls them by the digests the registry computed, under their real names.
- "Google" is a network namespace of the test's (GCE_NETNS), linked to the VM by a veth pair as a GCE
  VM's eth0: the metadata server at 169.254.169.254, Secret Manager and SQL Admin behind TLS at the
  addresses the VM resolves their names to, the registry (ghcr.io, gcr.io) and Cloud SQL's private IP.
  Their listeners live in that namespace; each connection is spliced to the fakes of tests/vm/fakes or
  to the registry and PostgreSQL on the host's loopback. Nothing else is reachable: the VM container
  has `--network none` and only that veth.
"""

from __future__ import annotations

import ctypes
import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from tests.host.cos_tools import COS_PATH, TOOLS

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
STANDINS = HERE / "standins"
VM_FILES = HERE / "vmroot"

CACHE = Path(os.environ.get("CONVEX_GCP_HOST_CACHE", "/var/cache/convex-gcp-host"))
RUN = Path("/run/convex-gcp-host")
SOCKET = RUN / "docker.sock"
# Debian's client, the daemon's own version (20.10); /usr/local/bin/docker may be another one.
DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
SUITE, MIRROR = "bookworm", os.environ.get("CONVEX_GCP_HOST_MIRROR", "http://deb.debian.org/debian")

# The VM: what COS ships that the boot path uses (systemd, Docker, iptables, util-linux, e2fsprogs,
# curl, coreutils), plus iproute2 for the test's own plumbing; rsync and sudo: the runbooks call them.
VM_PACKAGES = ("systemd", "systemd-sysv", "dbus", "docker.io", "iptables", "util-linux", "e2fsprogs", "curl",
               "ca-certificates", "iproute2", "kmod", "rsync", "sudo")
# The stand-in images' base: python3 for the stand-ins, psql for a real database connection, curl for the
# backend unit's health check (`curl -sf http://localhost:3210/version`, as in Convex's image).
IMAGE_PACKAGES = ("python3", "curl", "postgresql-client", "ca-certificates")
TRIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/cache/apt",
        "var/lib/apt/lists")

GCE_NETNS = "convex-gce"
GATEWAY, VM_IP = "10.128.0.1", "10.128.0.2"
METADATA_IP = "169.254.169.254"
GOOGLE_APIS_IP = "10.99.0.10"  # secretmanager / sqladmin / iamcredentials.googleapis.com in the VM's /etc/hosts
REGISTRY_IP = "10.99.0.11"  # ghcr.io and gcr.io
SQL_IP, SQL_PORT = "10.30.0.5", 3307  # the instance's private IP and the proxy's server port
HOSTS = {"metadata.google.internal": METADATA_IP, "secretmanager.googleapis.com": GOOGLE_APIS_IP,
         "sqladmin.googleapis.com": GOOGLE_APIS_IP, "iamcredentials.googleapis.com": GOOGLE_APIS_IP,
         "ghcr.io": REGISTRY_IP, "gcr.io": REGISTRY_IP}
DATA_DEVICE = "/dev/disk/by-id/google-convex-data"


# Commands run in a root file system being built get a clean environment: not the test session's TMPDIR
# (a directory that does not exist in there) or locale.
CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


def run(*args: str, check: bool = True, timeout: float = 600, input: str | None = None,
        env: dict | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, input=input,
                       env=env, stdin=None if input is not None else subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:6])} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


@contextmanager
def cache_lock(name: str):
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# --------------------------------------------------------------------------- outer engine


class Engine:
    """The outer Docker engine: Debian's dockerd with vfs storage on a socket of its own. Reused when one
    answers there (.ci/run starts it before the tier); stopped at the end only when started here."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def answering(self) -> bool:
        return self("version", "--format", "{{.Server.Version}}", check=False, timeout=20).returncode == 0

    def up(self) -> None:
        if SOCKET.exists() and self.answering():
            return
        RUN.mkdir(parents=True, exist_ok=True)
        log = open(RUN / "dockerd.log", "ab")
        # No bridge, no iptables: the engine runs only the VM container, which has no network of Docker's.
        self.proc = subprocess.Popen(
            [DOCKERD, "--storage-driver=vfs", f"--data-root={CACHE / 'docker'}", f"--exec-root={RUN / 'exec'}",
             f"--pidfile={RUN / 'dockerd.pid'}", f"--host=unix://{SOCKET}", "--bridge=none", "--iptables=false",
             "--ip-masq=false", "--ip6tables=false"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while not (SOCKET.exists() and self.answering()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start; see {RUN / 'dockerd.log'}")
            time.sleep(0.5)

    def down(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def __call__(self, *args: str, check: bool = True, timeout: float = 600, input: str | None = None):
        return run(DOCKER, "-H", f"unix://{SOCKET}", *args, check=check, timeout=timeout, input=input)


# --------------------------------------------------------------------------- root file systems


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _files_digest(directory: Path) -> list[tuple[str, str]]:
    return [(str(p.relative_to(directory)), hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(directory.rglob("*")) if p.is_file()]


def rootfs(name: str, packages: tuple[str, ...], customize, extra_key: object = None) -> Path:
    """A debootstrap root file system as a tar file in CACHE, built once per package list: the bare
    debootstrap (the slow part) is cached by its package list, the customized tree by that and
    extra_key (what the customization writes). A second run, or a CI run with the cache kept, reuses both."""
    base_key = _key(SUITE, MIRROR, packages, TRIM)
    base = CACHE / f"{name}-debootstrap-{base_key}.tar"
    tar = CACHE / f"{name}-{_key(base_key, extra_key)}.tar"
    with cache_lock(name):
        if tar.exists():
            return tar
        work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=CACHE))
        try:
            root = work / "root"
            if not base.exists():
                (CACHE / "debs").mkdir(exist_ok=True)
                run("debootstrap", "--variant=minbase", f"--cache-dir={CACHE / 'debs'}",
                    f"--include={','.join(packages)}", SUITE, str(root), MIRROR, timeout=1800, env=CLEAN_ENV)
                for path in TRIM:
                    shutil.rmtree(root / path, ignore_errors=True)
                    (root / path).mkdir(parents=True, exist_ok=True)
                run("tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(work / "base.tar"), ".")
                for old in CACHE.glob(f"{name}-debootstrap-*.tar"):
                    old.unlink()  # one per name: an older package list's is not used again
                os.replace(work / "base.tar", base)
            else:
                root.mkdir()
                run("tar", "--numeric-owner", "--xattrs", "-C", str(root), "-xpf", str(base))
            customize(root)
            run("tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(work / "rootfs.tar"), ".")
            for old in CACHE.glob(f"{name}-*.tar"):
                if not old.name.startswith(f"{name}-debootstrap-"):
                    old.unlink()
            os.replace(work / "rootfs.tar", tar)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return tar


def pki() -> dict[str, Path]:
    """A CA the VM trusts (baked into its root file system) and one server certificate for the names
    the VM reaches over TLS (googleapis.com, ghcr.io, gcr.io). Made once, cached; the server certificate
    alone is made again when HOSTS names a new host (the CA, and so the VM's root file system, stays)."""
    d = CACHE / "pki"
    files = {"ca": d / "ca.crt", "ca_key": d / "ca.key", "cert": d / "server.crt", "key": d / "server.key"}
    ext_text = ("subjectAltName=" + ",".join(f"DNS:{n}" for n in HOSTS if n != "metadata.google.internal")
                + "\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n")
    ext = d / "server.ext"
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")
    with cache_lock("pki"):
        d.mkdir(parents=True, exist_ok=True)
        if not (files["ca"].exists() and files["ca_key"].exists()):
            run("openssl", "req", "-x509", *key, "-nodes", "-days", "3650", "-subj", "/O=convex-gcp host tier/CN=test CA",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout", str(files["ca_key"]), "-out", str(files["ca"]))
            files["cert"].unlink(missing_ok=True)
        if files["cert"].exists() and files["key"].exists() and ext.exists() and ext.read_text() == ext_text:
            return files
        ext.write_text(ext_text)
        run("openssl", "req", "-new", *key, "-nodes", "-subj", "/CN=googleapis.test", "-keyout", str(files["key"]),
            "-out", str(d / "server.csr"))
        run("openssl", "x509", "-req", "-in", str(d / "server.csr"), "-CA", str(files["ca"]), "-CAkey", str(files["ca_key"]),
            "-CAcreateserial", "-days", "3650", "-extfile", str(ext), "-out", str(files["cert"]))
        return files


def _customize_vm(root: Path) -> None:
    """COS-like where the boot path can tell: units enabled from /usr (so /etc/systemd/system can be a
    tmpfs, as /etc is on COS), Docker on vfs, the test CA trusted, only COS's commands in COS_PATH, a
    non-root login user. The guest agent's stand-in files (VM_FILES) are bind-mounted over the empty
    files made here when a VM is created, so changing them rebuilds nothing."""
    etc_units = root / "etc/systemd/system"
    keep = {"multi-user.target.wants": ("docker.service", "containerd.service", "google-startup-scripts.service"),
            "sockets.target.wants": ("docker.socket",)}
    for wants, names in keep.items():
        target = root / "usr/lib/systemd/system" / wants
        target.mkdir(parents=True, exist_ok=True)
        for unit in names:
            (target / unit).unlink(missing_ok=True)
            (target / unit).symlink_to(f"../{unit}")
    shutil.rmtree(etc_units)
    etc_units.mkdir()
    for path in VM_FILE_PATHS:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).touch()
    (root / "etc/docker").mkdir(exist_ok=True)
    (root / "etc/docker/daemon.json").write_text(json.dumps({"storage-driver": "vfs"}) + "\n")
    shutil.copy(pki()["ca"], root / "usr/local/share/ca-certificates/convex-gcp-host-tier.crt")
    run("chroot", str(root), "update-ca-certificates", env=CLEAN_ENV)
    (root / "etc/machine-id").write_text("")
    (root / "etc/hostname").write_text("convex-vm\n")
    # The startup script runs with PATH=COS_PATH: only the commands COS ships (tests/host/cos_tools.py).
    cos_path = root / COS_PATH.lstrip("/")
    cos_path.mkdir(parents=True)
    for tool in TOOLS:
        found = [d for d in ("usr/bin", "usr/sbin", "bin", "sbin") if (root / d / tool).exists()]
        if not found:
            raise RuntimeError(f"{tool} (COS ships it) is not in the VM's root file system")
        (cos_path / tool).symlink_to(f"/{found[0]}/{tool}")
    # A non-root login user, as OS Login makes one.
    run("chroot", str(root), "useradd", "--create-home", "--uid", "1000", "--shell", "/bin/bash", "oslogin-user",
        env=CLEAN_ENV)


# What VM_FILES holds, as paths in the VM (bind-mounted read-only by tests/host/vm.py).
VM_FILE_PATHS = ("usr/local/sbin/vm-init", "usr/bin/google_metadata_script_runner",
                 "usr/lib/systemd/system/google-startup-scripts.service")


def vm_image(engine: Engine) -> str:
    tar = rootfs("vm", VM_PACKAGES, _customize_vm, (VM_FILE_PATHS, pki()["ca"].read_text(), TOOLS))
    tag = f"convex-gcp-host/vm:{tar.stem.rsplit('-', 1)[1]}"
    with cache_lock("vm-image"):
        if engine("image", "inspect", tag, check=False).returncode != 0:
            engine("import", "--change", 'CMD ["/usr/local/sbin/vm-init"]', str(tar), tag, timeout=1800)
    return tag


def _customize_image(root: Path) -> None:
    pass


# --------------------------------------------------------------------------- registry and images


class Registry:
    """Debian's docker-registry on the host's loopback, its storage cached (a blob already there is not
    pushed again). The VM reaches it as ghcr.io and gcr.io through GCE_NETNS (TLS ends there)."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.dir = CACHE / "registry"
        self.dir.mkdir(parents=True, exist_ok=True)
        config = RUN / "registry.yml"
        RUN.mkdir(parents=True, exist_ok=True)
        config.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {self.dir}\n"
                          f"http:\n  addr: 127.0.0.1:{self.port}\n")
        self.log = open(RUN / "registry.log", "ab")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/v2/", timeout=2).read()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"docker-registry did not start; see {RUN / 'registry.log'}")
                time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()

    def _request(self, method: str, url: str, data: bytes | None = None, headers: dict | None = None):
        request = urllib.request.Request(url if url.startswith("http") else self.url + url, data=data,
                                         method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def put_blob(self, repo: str, data: bytes | Path, digest: str) -> None:
        """Registry HTTP API V2 (distribution/distribution docs/spec/api.md): HEAD, else a monolithic upload."""
        if self._request("HEAD", f"/v2/{repo}/blobs/{digest}")[0] == 200:
            return
        status, headers, body = self._request("POST", f"/v2/{repo}/blobs/uploads/")
        assert status == 202, (status, body)
        location = headers["Location"]
        payload = data.read_bytes() if isinstance(data, Path) else data
        sep = "&" if "?" in location else "?"
        status, _, body = self._request("PUT", f"{location}{sep}digest={digest}", payload,
                                        {"Content-Type": "application/octet-stream"})
        assert status == 201, (status, body)

    def put_image(self, repo: str, tag: str, layers: list[tuple[Path, str, str, int]], config: dict) -> str:
        """Push an image of gzipped layers (file, digest, diff_id, size) and a container config; returns
        `sha256:...`, the manifest digest the registry answers with."""
        for path, digest, _, _ in layers:
            self.put_blob(repo, path, digest)
        config = {"architecture": "amd64", "os": "linux", "config": config,
                  "rootfs": {"type": "layers", "diff_ids": [layer[2] for layer in layers]}}
        config_bytes = json.dumps(config, sort_keys=True).encode()
        config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
        self.put_blob(repo, config_bytes, config_digest)
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                               "size": len(config_bytes), "digest": config_digest},
                    "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": size,
                                "digest": digest} for _, digest, _, size in layers]}
        status, headers, body = self._request("PUT", f"/v2/{repo}/manifests/{tag}", json.dumps(manifest).encode(),
                                              {"Content-Type": manifest["mediaType"]})
        assert status == 201, (status, body)
        return headers["Docker-Content-Digest"]


def _gzip_layer(tar: Path, name: str) -> tuple[Path, str, str, int]:
    """A layer blob for a tar file, cached next to it: (file, sha256 of the gzip, of the tar, size)."""
    out = CACHE / "layers" / f"{name}-{hashlib.sha256(tar.read_bytes()).hexdigest()[:16]}.tar.gz"
    meta = out.with_suffix(".json")
    with cache_lock("layers"):
        if not meta.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(tar, "rb") as src, open(out, "wb") as raw:
                with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
                    shutil.copyfileobj(src, gz, 1 << 20)
            meta.write_text(json.dumps({
                "digest": "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest(),
                "diff_id": "sha256:" + hashlib.sha256(tar.read_bytes()).hexdigest(), "size": out.stat().st_size}))
    m = json.loads(meta.read_text())
    return out, m["digest"], m["diff_id"], m["size"]


def _standin_tar() -> Path:
    """The stand-in scripts as a layer: /opt/standin/*, and ./generate_admin_key.sh where the backend
    image has it (its working directory)."""
    files = sorted(p for p in STANDINS.iterdir() if p.is_file())
    tar = CACHE / "layers" / f"standins-{_key(_files_digest(STANDINS))}.tar"
    if tar.exists():
        return tar
    tar.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as out:
        for directory in ("opt", "opt/standin", "convex"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            out.addfile(info)
        for path in files:
            data = path.read_bytes()
            for target in [f"opt/standin/{path.name}"] + (["convex/generate_admin_key.sh"]
                                                          if path.name == "generate_admin_key.sh" else []):
                info = tarfile.TarInfo(target)
                info.size, info.mode, info.mtime = len(data), 0o755, 0
                out.addfile(info, io.BytesIO(data))
    tar.write_bytes(buffer.getvalue())
    return tar


BACKEND_REPO = "get-convex/convex-backend"
DASHBOARD_REPO = "get-convex/convex-dashboard"
PROXY_REPO = "cloud-sql-connectors/cloud-sql-proxy"
REPO_HOST = {BACKEND_REPO: "ghcr.io", DASHBOARD_REPO: "ghcr.io", PROXY_REPO: "gcr.io"}
ENTRYPOINTS = {BACKEND_REPO: ["python3", "/opt/standin/convex_backend.py"],
               DASHBOARD_REPO: ["python3", "/opt/standin/convex_dashboard.py"],
               PROXY_REPO: ["python3", "/opt/standin/cloud_sql_proxy.py"]}


class Images:
    """Stand-in images in the registry: image(repo, **env) pushes a variant (its env knobs) once and
    returns its pinned reference `host/repo@sha256:...`, as the program renders pinned images."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        base = rootfs("standin-base", IMAGE_PACKAGES, _customize_image)
        self.layers = [_gzip_layer(base, "standin-base"), _gzip_layer(_standin_tar(), "standins")]
        self.pushed: dict[str, str] = {}

    def image(self, repo: str, **env: str) -> str:
        env = {k: str(v) for k, v in env.items()}
        key = json.dumps([repo, sorted(env.items())])
        if key not in self.pushed:
            config = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                              *(f"{k}={v}" for k, v in sorted(env.items()))],
                      "Entrypoint": ENTRYPOINTS[repo], "WorkingDir": "/convex" if repo == BACKEND_REPO else "/"}
            tag = "standin-" + _key(env)
            digest = self.registry.put_image(repo, tag, self.layers, config)
            self.pushed[key] = f"{REPO_HOST[repo]}/{repo}@{digest}"
        return self.pushed[key]


# --------------------------------------------------------------------------- the GCE side


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def _in_netns(netns: Path, make):
    """Call make() on a thread that has entered the network namespace: sockets it creates stay in that
    namespace (setns(2) moves only the calling thread); the rest of the process never leaves its own."""
    out: list = []

    def enter() -> None:
        fd = os.open(netns, os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                out.append(OSError(ctypes.get_errno(), f"setns {netns}"))
                return
        finally:
            os.close(fd)
        try:
            out.append(make())
        except Exception as error:  # handed to the caller
            out.append(error)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    if isinstance(out[0], Exception):
        raise out[0]
    return out[0]


def _splice(a: socket.socket, b: socket.socket) -> None:
    def one_way(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    t = threading.Thread(target=one_way, args=(b, a), daemon=True)
    t.start()
    one_way(a, b)
    t.join()
    a.close()
    b.close()


class Gce:
    """The network namespace the VM's eth0 leads to, with listeners for the services the VM reaches."""

    def __init__(self) -> None:
        self.path = Path("/run/netns") / GCE_NETNS
        run("ip", "netns", "delete", GCE_NETNS, check=False)
        run("ip", "netns", "add", GCE_NETNS)
        run("ip", "-n", GCE_NETNS, "link", "set", "lo", "up")
        for ip in (METADATA_IP, GOOGLE_APIS_IP, REGISTRY_IP, SQL_IP):
            run("ip", "-n", GCE_NETNS, "addr", "add", f"{ip}/32", "dev", "lo")
        self.listeners: list[socket.socket] = []
        self.targets: dict[tuple[str, int], tuple[int, ssl.SSLContext | None]] = {}
        self.closed = False
        files = pki()
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(files["cert"], files["key"])
        self.blocked: set[tuple[str, int]] = set()  # addresses whose connections are refused (an outage)

    def listen(self, ip: str, port: int, target_port: int, tls: bool = False) -> None:
        """Connections to ip:port inside the namespace reach 127.0.0.1:target_port on the host."""
        sock = _in_netns(self.path, lambda: socket.create_server((ip, port), backlog=64))
        self.listeners.append(sock)
        self.targets[(ip, port)] = (target_port, self.tls if tls else None)
        threading.Thread(target=self._accept, args=(sock, (ip, port)), daemon=True).start()

    def retarget(self, ip: str, port: int, target_port: int) -> None:
        target = self.targets[(ip, port)]
        self.targets[(ip, port)] = (target_port, target[1])

    def _accept(self, sock: socket.socket, address: tuple[str, int]) -> None:
        while not self.closed:
            try:
                client, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client, address), daemon=True).start()

    def _serve(self, client: socket.socket, address: tuple[str, int]) -> None:
        port, tls = self.targets[address]
        try:
            if address in self.blocked:
                client.close()
                return
            if tls is not None:
                client.settimeout(30)
                client = tls.wrap_socket(client, server_side=True)
                client.settimeout(None)
            upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        _splice(client, upstream)

    def plug(self, pid: int, name: str) -> None:
        """The VM's NIC: a veth pair, eth0 in the VM's network namespace, `name` here; a default route."""
        run("ip", "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", str(pid))
        run("ip", "link", "set", name, "netns", GCE_NETNS)
        run("ip", "-n", GCE_NETNS, "addr", "add", f"{GATEWAY}/24", "dev", name)
        run("ip", "-n", GCE_NETNS, "link", "set", name, "up")
        vm = ("nsenter", "-t", str(pid), "-n")
        run(*vm, "ip", "addr", "add", f"{VM_IP}/24", "dev", "eth0")
        run(*vm, "ip", "link", "set", "eth0", "up")
        run(*vm, "ip", "route", "add", "default", "via", GATEWAY)

    def curl(self, url: str, timeout: float = 10) -> tuple[int, str]:
        """What a user outside the VM gets from it (through its eth0): (HTTP status or 0, body)."""
        p = run("ip", "netns", "exec", GCE_NETNS, "curl", "-s", "-m", str(timeout), "-w", "\n%{http_code}", url,
                check=False, timeout=timeout + 10)
        body, _, code = p.stdout.rpartition("\n")
        return int(code or 0), body

    def close(self) -> None:
        self.closed = True
        for sock in self.listeners:
            sock.close()
        run("ip", "netns", "delete", GCE_NETNS, check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str]) -> int:
    """`python -m tests.host.machine up|down`: the outer engine for CI (.ci/run starts it before the
    tier and stops it after; the tier reuses an engine that answers)."""
    if argv == ["up"]:
        engine = Engine()
        engine.up()
        print(f"dockerd: {SOCKET} ({engine('version', '--format', '{{.Server.Version}}').stdout.strip()})")
        return 0
    if argv == ["down"]:
        pid_file = RUN / "dockerd.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            try:
                os.kill(pid, 15)
            except ProcessLookupError:  # already gone (a failed `up`, or stopped by hand)
                return 0
            for _ in range(120):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.5)
        return 0
    print("usage: python -m tests.host.machine up|down", flush=True)
    return 2


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
