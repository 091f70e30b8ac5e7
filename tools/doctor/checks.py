"""Google-side checks: pure functions of the stack's outputs and the seam's typed records.
The seed's diagnosis script checked scopes, peering, instance state, TCP and a psql login;
these add what its troubleshooting section teaches (proxy readiness, /version, CA, restarts)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Optional

from .gcloud_seam import Peering, ServiceConnection, SqlInstance, VmInstance, VmProbe
from .result import Check, failed, passed, skipped, warned

PROXY_SCOPES = {"https://www.googleapis.com/auth/cloud-platform", "https://www.googleapis.com/auth/sqlservice.admin"}
# The seed's scope: deprecated, and it does not let the proxy fetch its certificates.
DEPRECATED_SCOPE = "https://www.googleapis.com/auth/sqlservice"
SERVICE = "servicenetworking.googleapis.com"
CA_WARN_DAYS = 30
PROXY_SERVER_PORT = 3307


@dataclass(frozen=True)
class StackOutputs:
    """The outputs contract (docs/outputs.md) the doctor reads what to check from."""

    convex_url: str
    sql_instance_name: str
    sql_connection_name: str
    sql_private_ip: str
    database_name: str
    database_user: str
    vm_name: str
    vm_zone: str
    vm_service_account: str
    network: str
    peering_range: str
    connection_mode: str

    @property
    def project(self) -> str:
        return self.sql_connection_name.split(":")[0]

    @classmethod
    def from_json(cls, data: dict[str, object]) -> "StackOutputs":
        missing = [name for name in cls.__dataclass_fields__ if name not in data]
        if missing:
            raise ValueError(f"stack outputs lack {', '.join(missing)}: run `pulumi up` first, or pass the right --outputs file")
        return cls(**{name: str(data[name]) for name in cls.__dataclass_fields__})


def check_vm_scopes(out: StackOutputs, vm: VmInstance) -> Check:
    scopes = set(vm.scopes)
    fix = (
        f"pulumi up (the program declares the scopes), or by hand:\n"
        f"gcloud compute instances stop {out.vm_name} --zone={out.vm_zone} --project={out.project} && "
        f"gcloud compute instances set-service-account {out.vm_name} --zone={out.vm_zone} --project={out.project} "
        f"--service-account={out.vm_service_account} --scopes=cloud-platform,sqlservice.admin && "
        f"gcloud compute instances start {out.vm_name} --zone={out.vm_zone} --project={out.project}"
    )
    if vm.service_account != out.vm_service_account:
        return failed("vm_scopes", f"the VM runs as {vm.service_account or 'no service account'}, not {out.vm_service_account}", fix)
    if not scopes & PROXY_SCOPES:
        why = " (the seed's sqlservice scope is deprecated; the proxy gets 403 ACCESS_TOKEN_SCOPE_INSUFFICIENT)" if DEPRECATED_SCOPE in scopes else ""
        return failed("vm_scopes", f"scopes {sorted(scopes)} include neither cloud-platform nor sqlservice.admin{why}", fix)
    if "https://www.googleapis.com/auth/cloud-platform" not in scopes:
        return failed("vm_scopes", "no cloud-platform scope: Secret Manager (INSTANCE_SECRET, admin key) accepts no narrower scope", fix)
    return passed("vm_scopes", f"{vm.service_account} with {', '.join(s.rsplit('/', 1)[-1] for s in sorted(scopes))}")


def check_vm_running(out: StackOutputs, vm: VmInstance) -> Check:
    if vm.status != "RUNNING":
        return failed("vm_running", f"{out.vm_name} is {vm.status}", f"gcloud compute instances start {out.vm_name} --zone={out.vm_zone} --project={out.project} (docs/runbooks.md, 'Recover the VM')")
    return passed("vm_running", f"{out.vm_name} is RUNNING")


def check_peering(out: StackOutputs, connections: list[ServiceConnection], peerings: list[Peering]) -> Check:
    fix = (
        f"gcloud services vpc-peerings connect --service={SERVICE} --ranges={out.peering_range} --network={out.network} --project={out.project}\n"
        "(or `pulumi up`, which declares the connection)"
    )
    connection = next((c for c in connections if c.service.endswith(SERVICE)), None)
    if connection is None:
        return failed("vpc_peering", f"network {out.network} has no private services connection", fix)
    if out.peering_range not in connection.reserved_ranges:
        return failed("vpc_peering", f"the connection reserves {list(connection.reserved_ranges)}, not {out.peering_range}",
                      f"gcloud services vpc-peerings update --service={SERVICE} --ranges={out.peering_range} --network={out.network} --project={out.project} --force")
    peering = next((p for p in peerings if p.name == connection.peering), None)
    if peering is None or peering.state != "ACTIVE":
        state = peering.state if peering else "missing"
        return failed("vpc_peering", f"VPC peering {connection.peering} is {state}", fix)
    return passed("vpc_peering", f"{connection.peering} ACTIVE with range {out.peering_range}")


def check_sql_instance(out: StackOutputs, sql: SqlInstance) -> Check:
    name = f"--project={out.project} {out.sql_instance_name}"
    if sql.state != "RUNNABLE":
        return failed("sql_instance", f"{out.sql_instance_name} is {sql.state}", f"gcloud sql instances describe {name}; gcloud sql operations list --instance={out.sql_instance_name} --project={out.project}")
    if not sql.private_network.endswith(f"/networks/{out.network}"):
        return failed("sql_instance", f"private network is {sql.private_network or 'unset'}, not {out.network}",
                      f"gcloud sql instances patch {name} --network={out.network} --no-assign-ip (needs the peering first)")
    if sql.private_ip != out.sql_private_ip:
        return failed("sql_instance", f"private IP {sql.private_ip or 'none'} differs from the stack's {out.sql_private_ip}", "pulumi refresh && pulumi up")
    if sql.ipv4_enabled or sql.public_ips:
        return warned("sql_instance", f"RUNNABLE on {sql.private_ip}, but a public IP is on ({', '.join(sql.public_ips)})",
                      f"gcloud sql instances patch {name} --no-assign-ip")
    return passed("sql_instance", f"RUNNABLE, {sql.database_version} {sql.tier}, private IP {sql.private_ip} on {out.network}")


def expected_ssl_modes(connection_mode: str) -> tuple[str, ...]:
    return {
        "proxy": ("TRUSTED_CLIENT_CERTIFICATE_REQUIRED", "ENCRYPTED_ONLY"),
        "ssl": ("ENCRYPTED_ONLY",),
        "plaintext": ("ALLOW_UNENCRYPTED_AND_ENCRYPTED",),
    }.get(connection_mode, ())


def check_server_ca(out: StackOutputs, sql: SqlInstance, now: Optional[datetime] = None) -> Check:
    now = now or datetime.now(timezone.utc)
    patch = f"gcloud sql instances patch {out.sql_instance_name} --project={out.project}"
    if sql.ssl_mode not in expected_ssl_modes(out.connection_mode):
        return failed("server_ca", f"ssl_mode {sql.ssl_mode or 'unset'} does not suit connection mode {out.connection_mode}",
                      f"pulumi up (the program sets it), or {patch} --ssl-mode={expected_ssl_modes(out.connection_mode)[0]}")
    detail = f"ssl_mode {sql.ssl_mode}, {sql.server_ca_mode}"
    if out.connection_mode == "ssl" and sql.server_ca_mode != "GOOGLE_MANAGED_CAS_CA":
        return failed("server_ca", f"{detail}: its certificates carry no usable SAN, so Convex (rustls, host-name checks) cannot verify them",
                      f"{patch} --server-ca-mode=GOOGLE_MANAGED_CAS_CA, then connect by the instance's DNS name")
    if sql.server_ca_expires is not None:
        left = sql.server_ca_expires - now
        when = sql.server_ca_expires.date().isoformat()
        rotate = (f"gcloud sql ssl server-ca-certs create --instance={out.sql_instance_name} --project={out.project}; "
                  f"update PG_CA_FILE where used; then gcloud sql ssl server-ca-certs rotate --instance={out.sql_instance_name} --project={out.project}")
        if left <= timedelta(0):
            return failed("server_ca", f"{detail}; the server CA expired on {when}", rotate)
        if left < timedelta(days=CA_WARN_DAYS):
            return warned("server_ca", f"{detail}; the server CA expires on {when}", rotate)
        detail += f"; CA valid until {when}"
    if out.connection_mode == "proxy":
        detail += " (the proxy verifies it itself; nothing to refresh on the VM)"
    return passed("server_ca", detail)


def probe_targets(out: StackOutputs) -> list[tuple[str, int]]:
    """The proxy reaches the instance on 3307; direct modes on 5432."""
    port = PROXY_SERVER_PORT if out.connection_mode == "proxy" else 5432
    return [(out.sql_private_ip, port)]


def check_tcp(out: StackOutputs, probe: VmProbe) -> Check:
    host, port = probe_targets(out)[0]
    key = f"{host}:{port}"
    if key not in probe.tcp:
        return skipped("tcp", f"{key} not probed")
    if not probe.tcp[key]:
        return failed("tcp", f"Cloud SQL unreachable: the VM cannot open TCP {key}",
                      "Check the instance is RUNNABLE (sql_instance), the peering (vpc_peering) and that no egress firewall rule blocks the private services range; "
                      f"gcloud compute networks peerings list --network={out.network} --project={out.project}")
    return passed("tcp", f"the VM reaches {key}")


def container_logs(out: StackOutputs, container: str) -> str:
    """Every start's output, also of containers `--rm` removed: the log COS's agent ships (components/monitoring.py)."""
    query = f'logName="projects/{out.project}/logs/cos_containers" AND jsonPayload."cos.googleapis.com/container_name"="{container}"'
    return f"gcloud logging read '{query}' --freshness=1h --limit=50 --project={out.project}"


def check_proxy(out: StackOutputs, probe: VmProbe) -> Check:
    if out.connection_mode != "proxy":
        return skipped("proxy_ready", f"connection mode {out.connection_mode} runs no proxy")
    logs = container_logs(out, "cloudsql-proxy")
    # /readiness does not depend on the instance (cloud-sql-proxy PR #2207, v2.11.1); the VM runs the
    # proxy with --run-connection-test, so it exits (and systemd restarts it) while Cloud SQL is unreachable.
    status, restarts = probe.containers.get("cloudsql-proxy", ("missing", 0))
    if probe.proxy_ready != "200" and restarts:
        return failed("proxy_ready", f"Cloud SQL unreachable: the proxy failed its connection test and was restarted {restarts} times (now {status})",
                      "Check the instance is RUNNABLE, the private services access peering (vpc_peering) and egress TCP 3307 to its private IP, "
                      "roles/cloudsql.client on the VM service account; 'Connection test failed' in the log names the error.\n" + logs)
    if probe.proxy_ready != "200":
        return failed("proxy_ready", f"the proxy's /readiness answered {probe.proxy_ready or 'nothing'}",
                      "403 ACCESS_TOKEN_SCOPE_INSUFFICIENT in its log: the VM's scopes (vm_scopes). 'not authorized': roles/cloudsql.client.\n" + logs)
    return passed("proxy_ready", "the proxy passed its connection test at start (--run-connection-test) and /readiness answered 200")


def check_containers(out: StackOutputs, probe: VmProbe, expected: list[str]) -> Check:
    problems = []
    for name in expected:
        status, restarts = probe.containers.get(name, ("missing", 0))
        if status != "running":
            problems.append(f"{name} is {status}")
        elif restarts:
            problems.append(f"{name} restarted {restarts} times")
    shown = ", ".join(f"{n} {probe.containers.get(n, ('missing', 0))[0]}" for n in expected)
    if any("is " in p for p in problems):
        return failed("containers", "; ".join(problems),
                      f"sudo journalctl -u google-startup-scripts on the VM, then systemctl status NAME (docs/runbooks.md, 'Recover the VM'); "
                      f"the container's output: {container_logs(out, 'NAME')}")
    if problems:
        return warned("containers", "; ".join(problems),
                      "systemd restarted it since the unit started (NRestarts; the restart alert fires on each start line): "
                      f"the exit status in systemctl status NAME, the cause in its output: {container_logs(out, 'NAME')}")
    return passed("containers", shown)


def fetch_version(url: str, timeout: float = 10) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/version", timeout=timeout) as response:  # noqa: S310 (operator-given stack URL)
            return response.status == 200, response.read(200).decode(errors="replace").strip()
    except (urllib.error.URLError, OSError, ValueError) as error:
        return False, str(error)


def check_version(out: StackOutputs, reachable: tuple[bool, str], probe: Optional[VmProbe]) -> Check:
    ok, body = reachable
    if ok:
        return passed("convex_version", f"{out.convex_url}/version answered {body!r}")
    local = probe.local_version if probe else ""
    if local and local != "fail":
        return failed("convex_version", f"{out.convex_url}/version failed from here ({body}) but answers on the VM ({local!r})",
                      "The firewall's apiSourceRanges do not include your address (pulumi config set --path 'convex-gcp:network.apiSourceRanges[0]' <your-cidr>), or the front door is unhealthy.")
    return failed("convex_version", f"{out.convex_url}/version failed ({body}); on the VM too",
                  "The backend is not serving: it binds only after Postgres connected. Check postgres_* and proxy_ready, then the convex-backend container's logs.")


def describe(checks: list[Check]) -> str:
    return json.dumps([c.as_dict() for c in checks], indent=1)


# --------------------------------------------------------------------------- what the alerts watch
# The same signals and thresholds as the alert policies (components/monitoring.py, defaults of
# convex-gcp:monitoring), read on the VM by the probe (gcloud_seam.signals_script).
MEMORY_WARN, DISK_WARN, DISK_FAIL, ERROR_RATIO, DB_WAIT_S = 90, 85, 95, 0.05, 1.0


def _ssh(out: StackOutputs, command: str) -> str:
    return f"gcloud compute ssh {out.vm_name} --zone={out.vm_zone} --project={out.project} --tunnel-through-iap --command='{command}'"


def check_upgrade(out: StackOutputs, probe: VmProbe) -> Check:
    """The upgrade guard's last word (vm/convex-upgrade.sh writes `state=... image=... since=... detail=...`)."""
    fields = dict(part.split("=", 1) for part in probe.upgrade.split(" ") if "=" in part)
    state, image = fields.get("state", ""), fields.get("image", "")
    detail = probe.upgrade.split("detail=", 1)[1] if "detail=" in probe.upgrade else ""
    runbook = "docs/runbooks.md, \"Upgrade Convex\"; " + _ssh(out, "journalctl -u convex-upgrade --no-pager | tail -50")
    if not state:
        return skipped("upgrade", "no upgrade status on the data disk yet")
    if state == "healthy":
        return passed("upgrade", f"backend {image} healthy ({detail})")
    if state in ("upgrading", "migrating"):
        return warned("upgrade", f"backend {image} is coming up: {state} ({detail})", "wait for it; " + runbook)
    if state == "rolled-back":
        return failed("upgrade", f"the new backend never answered and no migration began: the VM went back {detail}",
                      "pin the previous SHA (or a fixed one): pulumi config set --path convex-gcp:convex.version <sha>; " + runbook)
    return failed("upgrade", f"backend {image}: {state} ({detail})",
                  "a migration may have run: do not pin the old SHA alone; fix forward or restore the pre-upgrade copies; " + runbook)


def check_memory(out: StackOutputs, probe: VmProbe) -> Check:
    if probe.memory_percent is None:
        return skipped("vm_memory", "the probe read no /proc/meminfo")
    oom = f"; {probe.oom_kills} OOM kill(s) since boot, last: {probe.oom_last}" if probe.oom_kills else ""
    fix = ("A larger machine type: pulumi config set --path convex-gcp:vm.machineType e2-standard-4 && pulumi up "
           "(replaces the VM; the data disk is kept). See what grows: " + _ssh(out, "sudo docker stats --no-stream"))
    if probe.oom_kills:
        return failed("vm_memory", f"memory {probe.memory_percent}% in use{oom}", fix)
    if probe.memory_percent >= MEMORY_WARN:
        return warned("vm_memory", f"memory {probe.memory_percent}% in use (page cache excluded): the kernel kills the largest process next", fix)
    return passed("vm_memory", f"memory {probe.memory_percent}% in use, no OOM kill since boot" if probe.oom_kills == 0 else f"memory {probe.memory_percent}% in use")


def check_disks(out: StackOutputs, probe: VmProbe) -> Check:
    if not probe.disks:
        return skipped("vm_disks", "the probe read no disk usage")
    fixes = {
        "data": "grow it: pulumi config set --path convex-gcp:vm.dataDiskSizeGb <GB> && pulumi up (online; the VM runs resize2fs on its next reconcile), "
                "or delete old exports and files; what is big: " + _ssh(out, "sudo du -sh /mnt/disks/convex-data/convex/*"),
        "boot": "remove images no unit uses: " + _ssh(out, "sudo docker image prune -a -f") + "; or a larger convex-gcp:vm.bootDiskSizeGb (replaces the VM)",
    }
    shown = ", ".join(f"{name} disk {used}%" for name, used in sorted(probe.disks.items()))
    worst = max(probe.disks, key=lambda name: probe.disks[name])
    if probe.disks[worst] >= DISK_FAIL:
        return failed("vm_disks", f"{shown}: the {worst} disk is full or nearly", fixes[worst])
    if probe.disks[worst] >= DISK_WARN:
        return warned("vm_disks", f"{shown}: the {worst} disk is filling", fixes[worst])
    return passed("vm_disks", shown)


def _counter(lines: list[str], name: str, where: str = "") -> float:
    total = 0.0
    for line in lines:
        series, _, value = line.rpartition(" ")
        if (series == name or series.startswith(name + "{")) and where in series:
            total += float(value)
    return total


def check_backend_metrics(out: StackOutputs, probe: VmProbe) -> Check:
    """From the backend's own /metrics on the VM: counters since it started (the alerts use rates)."""
    if probe.metrics is None:
        return failed("backend_metrics", "the backend's /metrics did not answer on the VM",
                      "The backend is down (convex_version), or DISABLE_METRICS_ENDPOINT is set; then the Convex alerts are blind too. "
                      + _ssh(out, "sudo systemctl status convex-metrics convex-collector"))
    requests = _counter(probe.metrics, "http_handle_duration_seconds_count")
    errors = _counter(probe.metrics, "http_handle_duration_seconds_count", 'status="5')
    waits = _counter(probe.metrics, "postgres_get_connection_seconds_count")
    wait_mean = _counter(probe.metrics, "postgres_get_connection_seconds_sum") / waits if waits else 0.0
    function_ooms = _counter(probe.metrics, "isolate_out_of_memory_total")
    detail = (f"since the backend started: {int(requests)} requests, {int(errors)} answered 5xx, "
              f"database connection wait {wait_mean:.3f} s on average, {int(function_ooms)} function OOMs")
    if requests and errors / requests > ERROR_RATIO:
        return failed("backend_metrics", detail,
                      "Read the backend's errors (Logs Explorer: log cos_containers, container convex-backend, severity>=ERROR); the usual causes "
                      "are the database (postgres_* and the Cloud SQL alerts), a full data disk (vm_disks) or a bad functions deploy.")
    if wait_mean > DB_WAIT_S:
        return warned("backend_metrics", detail, "The Convex pool (convex.poolSize) is exhausted or Cloud SQL is slow: the 'pool fits' check and Cloud SQL CPU.")
    if function_ooms:
        return warned("backend_metrics", detail, "A function hit the isolate heap limit: find it in the Convex dashboard's logs and make it allocate less.")
    return passed("backend_metrics", detail)
