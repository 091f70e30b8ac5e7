"""The doctor's one seam to Google Cloud: `gcloud ... --format=json`, parsed into typed records.

Why gcloud and not REST with a token: the operator already has gcloud configured for the
stack (user login, impersonation, ADC all work), IAP TCP forwarding and OS Login SSH exist
only as gcloud commands anyway, and it needs no Google client library. Everything above this
module sees only the dataclasses below, so tests feed recorded `--format=json` output
through a fake runner (tests/doctor/fixtures/).
"""

from __future__ import annotations

import contextlib
import json
import shlex
import socket
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterator, Optional, Sequence

Runner = Callable[[Sequence[str]], str]


class SeamError(RuntimeError):
    """A gcloud command failed; the message is gcloud's own error text."""


def run_gcloud(args: Sequence[str]) -> str:
    result = subprocess.run(["gcloud", *args], capture_output=True, text=True, timeout=180)
    if result.returncode != 0:
        raise SeamError(result.stderr.strip()[-2000:] or f"gcloud exited {result.returncode}")
    return result.stdout


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class VmInstance:
    name: str
    status: str
    instance_id: str
    service_account: str
    scopes: tuple[str, ...]
    metadata: dict[str, str]

    def metadata_env(self, key: str) -> dict[str, str]:
        """A rendered KEY=VALUE metadata value (convex-gcp-config, convex-backend-env) as a dict."""
        pairs = (line.split("=", 1) for line in self.metadata.get(key, "").splitlines() if "=" in line)
        return {k: v for k, v in pairs}


@dataclass(frozen=True)
class Peering:
    name: str
    state: str
    peer_network: str


@dataclass(frozen=True)
class ServiceConnection:
    service: str
    peering: str
    reserved_ranges: tuple[str, ...]


@dataclass(frozen=True)
class SqlInstance:
    name: str
    state: str
    database_version: str
    tier: str
    private_network: str
    ipv4_enabled: bool
    private_ip: str
    public_ips: tuple[str, ...]
    ssl_mode: str
    server_ca_mode: str
    connector_enforcement: str
    flags: dict[str, str]
    server_ca_cert: str
    server_ca_expires: Optional[datetime]
    dns_name: str = ""


@dataclass(frozen=True)
class VmProbe:
    """What the doctor's probe script saw on the VM (see PROBE_SCRIPT)."""

    tcp: dict[str, bool] = field(default_factory=dict)  # "ip:port" -> reachable
    proxy_ready: str = ""  # HTTP status of /readiness, or "fail"
    local_version: str = ""  # body of localhost:3210/version, or "fail"
    containers: dict[str, tuple[str, int]] = field(default_factory=dict)  # name -> (status, restarts)
    proxy_ip: str = ""
    # The signals the alerts read (components/monitoring.py), seen on the VM itself:
    memory_percent: Optional[int] = None  # node-problem-detector's formula, page cache excluded
    disks: dict[str, int] = field(default_factory=dict)  # "data"/"boot" -> percent used (df)
    oom_kills: Optional[int] = None  # kernel "Killed process" lines since boot
    oom_last: str = ""
    metrics: Optional[list[str]] = None  # the backend's /metrics lines the checks read; None: unreachable
    upgrade: str = ""  # the upgrade guard's status line (vm/convex-upgrade.sh status), "" when it has none


# --------------------------------------------------------------------------- parsing (pure)


def parse_instance(data: dict[str, Any]) -> VmInstance:
    accounts = data.get("serviceAccounts") or [{}]
    items = (data.get("metadata") or {}).get("items") or []
    return VmInstance(
        name=data.get("name", ""),
        status=data.get("status", ""),
        instance_id=str(data.get("id", "")),
        service_account=accounts[0].get("email", ""),
        scopes=tuple(accounts[0].get("scopes") or ()),
        metadata={item["key"]: item.get("value", "") for item in items},
    )


def parse_peerings(data: list[dict[str, Any]]) -> list[Peering]:
    """`compute networks peerings list` returns networks with their peerings; accept either level."""
    flat: list[dict[str, Any]] = []
    for item in data:
        flat.extend(item["peerings"] if "peerings" in item else [item])
    return [Peering(p.get("name", ""), p.get("state", ""), p.get("network", "")) for p in flat]


def parse_service_connections(data: list[dict[str, Any]]) -> list[ServiceConnection]:
    return [
        ServiceConnection(c.get("service", ""), c.get("peering", ""), tuple(c.get("reservedPeeringRanges") or ()))
        for c in data
    ]


def _time(value: Optional[str]) -> Optional[datetime]:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def parse_sql_instance(data: dict[str, Any]) -> SqlInstance:
    settings = data.get("settings") or {}
    ip = settings.get("ipConfiguration") or {}
    addresses = data.get("ipAddresses") or []
    ca = data.get("serverCaCert") or {}
    return SqlInstance(
        name=data.get("name", ""),
        state=data.get("state", ""),
        database_version=data.get("databaseVersion", ""),
        tier=settings.get("tier", ""),
        private_network=ip.get("privateNetwork", ""),
        ipv4_enabled=bool(ip.get("ipv4Enabled", False)),
        private_ip=next((a["ipAddress"] for a in addresses if a.get("type") == "PRIVATE"), ""),
        public_ips=tuple(a["ipAddress"] for a in addresses if a.get("type") in ("PRIMARY", "OUTGOING")),
        ssl_mode=ip.get("sslMode", ""),
        server_ca_mode=ip.get("serverCaMode", "GOOGLE_MANAGED_INTERNAL_CA"),
        connector_enforcement=settings.get("connectorEnforcement", "NOT_REQUIRED"),
        flags={f["name"]: f.get("value", "") for f in settings.get("databaseFlags") or []},
        server_ca_cert=ca.get("cert", ""),
        server_ca_expires=_time(ca.get("expirationTime")),
        dns_name=data.get("dnsName", ""),
    )


def _int(value: Optional[str]) -> Optional[int]:
    return int(value) if value is not None and value.strip().isdigit() else None


def parse_probe(text: str) -> VmProbe:
    tcp: dict[str, bool] = {}
    containers: dict[str, tuple[str, int]] = {}
    values: dict[str, str] = {}
    disks: dict[str, int] = {}
    metrics: list[str] = []
    for line in text.splitlines():
        if line.startswith("metric "):
            metrics.append(line[len("metric "):])
            continue
        key, sep, value = line.partition("=")
        if key.startswith("disk.") and sep:
            if _int(value) is not None:
                disks[key[len("disk."):]] = int(value)
            continue
        if not sep:
            continue
        if key.startswith("tcp."):
            tcp[key[4:]] = value.strip() == "ok"
        elif key.startswith("container."):
            status, _, restarts = value.strip().partition(" ")
            containers[key[len("container."):]] = (status, int(restarts) if restarts.isdigit() else 0)
        else:
            values[key] = value.strip()
    return VmProbe(tcp, values.get("proxy_ready", ""), values.get("local_version", ""), containers, values.get("proxy_ip", ""),
                   memory_percent=_int(values.get("memory_percent")), disks=disks, oom_kills=_int(values.get("oom_kills")),
                   oom_last=values.get("oom_last", ""), metrics=None if values.get("metrics") == "fail" else metrics,
                   upgrade=values.get("upgrade", ""))


# The backend's own counters the checks read, as the pinned backend names them (tests/fakes/convex_metrics.py).
METRIC_LINES = r"^(http_handle_duration_seconds_count|isolate_out_of_memory_total|postgres_get_connection_seconds_(sum|count))[{ ]"
DATA_MOUNT, BOOT_MOUNT = "/mnt/disks/convex-data", "/mnt/stateful_partition"
# One line the upgrade guard keeps on the data disk (vm/convex-upgrade.sh STATE/status).
UPGRADE_STATUS = f"{DATA_MOUNT}/convex-gcp/upgrade/status"


def signals_script(meminfo: str = "/proc/meminfo", mounts: Optional[dict[str, str]] = None, kernel_log: str = "sudo -n dmesg",
                   metrics_url: str = "http://127.0.0.1:3210/metrics") -> str:
    """The probe's part that reads what the alerts watch: memory as node-problem-detector computes it
    ((MemTotal-MemFree-Buffers-Cached-Slab)/MemTotal, memory_collector_unix.go), each disk's use (the
    data disk's mount, COS's writable boot partition), OOM kills in the kernel log (the line
    kernel-monitor.json matches) and the backend's own counters. bash, df, grep, sed, curl: all on COS."""
    mounts = mounts or {"data": DATA_MOUNT, "boot": BOOT_MOUNT}
    lines = [
        "t=0 f=0 b=0 c=0 s=0",
        "while read -r k v _; do case $k in MemTotal:) t=$v;; MemFree:) f=$v;; Buffers:) b=$v;; Cached:) c=$v;; Slab:) s=$v;; esac; "
        f"done <{shlex.quote(meminfo)}",
        "((t > 0)) && echo memory_percent=$(( (t - f - b - c - s) * 100 / t ))",
    ]
    for name, mount in mounts.items():
        lines.append(f"read -r _ _ _ _ use _ < <(df -P {shlex.quote(mount)} 2>/dev/null | tail -n 1); echo disk.{name}=${{use%\\%}}; use=")
    lines.append(f"echo oom_kills=$({kernel_log} 2>/dev/null | grep -c 'Killed process')")
    lines.append(f"echo oom_last=$({kernel_log} 2>/dev/null | grep 'Killed process' | tail -n 1 | cut -c1-200)")
    lines.append(f"if m=$(curl -fsS -m 10 {shlex.quote(metrics_url)} 2>/dev/null); then "
                 f"grep -E {shlex.quote(METRIC_LINES)} <<<\"$m\" | sed 's/^/metric /'; else echo metrics=fail; fi")
    return "\n".join(lines)


def probe_script(targets: Sequence[tuple[str, int]], containers: Sequence[str]) -> str:
    """Runs on the VM (COS: bash, curl, docker via sudo). Prints KEY=VALUE lines only."""
    lines = ["set +e"]
    for host, port in targets:
        lines.append(
            f"if timeout 5 bash -c 'exec 3<>/dev/tcp/{host}/{port}' 2>/dev/null; then echo tcp.{host}:{port}=ok; else echo tcp.{host}:{port}=fail; fi"
        )
    lines.append("echo proxy_ready=$(curl -s -m 5 -o /dev/null -w '%{http_code}' http://127.0.0.1:9090/readiness || echo fail)")
    lines.append(f"echo upgrade=$(sudo -n head -n 1 {UPGRADE_STATUS} 2>/dev/null)")
    lines.append("echo local_version=$(curl -fsS -m 5 http://127.0.0.1:3210/version 2>/dev/null | head -c 200 | tr -d '\\n' || echo fail)")
    for name in containers:
        # Containers run as systemd units with `docker run --rm`: restarts are the unit's NRestarts.
        lines.append(f"echo container.{name}=$(sudo -n docker inspect -f '{{{{.State.Status}}}}' {name} 2>/dev/null || echo missing)"
                     f" $(systemctl show -p NRestarts --value {name}.service 2>/dev/null || echo 0)")
    lines.append(
        "echo proxy_ip=$(sudo -n docker inspect -f '{{(index .NetworkSettings.Networks \"convex-db\").IPAddress}}' cloudsql-proxy 2>/dev/null)"
    )
    lines.append(signals_script())
    return "\n".join(lines)


# --------------------------------------------------------------------------- the seam


class GcloudSeam:
    """Typed reads of one project's resources. `runner` is replaced by a fake in tests."""

    def __init__(self, project: str, runner: Runner = run_gcloud):
        self.project = project
        self.run = runner

    def _json(self, *args: str) -> Any:
        return json.loads(self.run([*args, f"--project={self.project}", "--format=json"]) or "null")

    def instance(self, name: str, zone: str) -> VmInstance:
        return parse_instance(self._json("compute", "instances", "describe", name, f"--zone={zone}"))

    def peerings(self, network: str) -> list[Peering]:
        return parse_peerings(self._json("compute", "networks", "peerings", "list", f"--network={network}") or [])

    def service_connections(self, network: str) -> list[ServiceConnection]:
        return parse_service_connections(self._json("services", "vpc-peerings", "list", f"--network={network}") or [])

    def sql_instance(self, name: str) -> SqlInstance:
        return parse_sql_instance(self._json("sql", "instances", "describe", name))

    def secret(self, secret_id: str) -> str:
        """The latest version of a secret (`projects/<p>/secrets/<name>`). Never printed or logged."""
        return self.run(["secrets", "versions", "access", f"{secret_id}/versions/latest", f"--project={self.project}"])

    def ssh_args(self, vm: str, zone: str) -> list[str]:
        return ["compute", "ssh", vm, f"--zone={zone}", f"--project={self.project}", "--tunnel-through-iap", "--quiet"]

    def probe(self, vm: str, zone: str, targets: Sequence[tuple[str, int]], containers: Sequence[str]) -> VmProbe:
        script = probe_script(targets, containers)
        return parse_probe(self.run([*self.ssh_args(vm, zone), f"--command=bash -c {shlex.quote(script)}"]))

    @contextlib.contextmanager
    def tunnel(self, vm: str, zone: str, host: str, port: int, local_port: int = 0) -> Iterator[int]:
        """Forward a local port through SSH over IAP to host:port as the VM sees it (the proxy's
        container address is reachable only from the VM). Yields the local port."""
        local_port = local_port or _free_port()
        command = ["gcloud", *self.ssh_args(vm, zone), "--", "-N", "-o", "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{local_port}:{host}:{port}"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise SeamError(f"the SSH tunnel exited: {(process.stderr.read() if process.stderr else '')[-1000:]}")
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", local_port), timeout=1):
                    break
                time.sleep(0.5)
            else:
                raise SeamError("the SSH tunnel did not open within 60 s")
            yield local_port
        finally:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
