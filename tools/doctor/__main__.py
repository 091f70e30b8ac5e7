"""Diagnose a deployed convex-gcp stack (docs/doctor.md).

    python -m tools.doctor dev                      # reads `pulumi stack output --json --stack dev`
    python -m tools.doctor prod --outputs out.json  # outputs saved earlier (no Pulumi CLI needed)
    python -m tools.doctor dev --no-ssh             # Google API checks and /version only

Needs gcloud logged in with read access to the project and, for the on-VM and Postgres checks,
IAP TCP forwarding plus OS Login to the VM (roles/iap.tunnelResourceAccessor,
roles/compute.osAdminLogin). Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

from tools import clis

from .checks import (
    check_backend_metrics,
    check_disks,
    check_memory,
    check_upgrade,
    StackOutputs,
    check_containers,
    check_peering,
    check_proxy,
    check_server_ca,
    check_sql_instance,
    check_tcp,
    check_version,
    check_vm_running,
    check_vm_scopes,
    fetch_version,
    probe_targets,
)
from .gcloud_seam import GcloudSeam, SeamError, SqlInstance, VmInstance, VmProbe
from .result import Check, failed, render, skipped

PG_PORT = 5432


def load_outputs(stack: str, path: Optional[str]) -> StackOutputs:
    if path:
        text = Path(path).read_text()
    else:
        result = subprocess.run(["pulumi", "stack", "output", "--json", "--stack", stack], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise SystemExit(f"pulumi stack output failed: {result.stderr.strip()}")
        text = result.stdout
    return StackOutputs.from_json(json.loads(text))


def _guard(name: str, checks: list[Check], call: Callable[[], object]) -> object:
    try:
        return call()
    except SeamError as error:
        checks.append(failed(name, f"gcloud failed: {error}", "Check `gcloud auth list`, the project, and your roles on it."))
        return None


def diagnose(out: StackOutputs, seam: GcloudSeam, ssh: bool = True, postgres: bool = True, version_fetcher=None) -> list[Check]:
    checks: list[Check] = []
    version_fetcher = version_fetcher or fetch_version
    vm = _guard("vm_scopes", checks, lambda: seam.instance(out.vm_name, out.vm_zone))
    if isinstance(vm, VmInstance):
        checks += [check_vm_scopes(out, vm), check_vm_running(out, vm)]
    connections = _guard("vpc_peering", checks, lambda: seam.service_connections(out.network))
    peerings = _guard("vpc_peering", checks, lambda: seam.peerings(out.network)) if connections is not None else None
    if connections is not None and peerings is not None:
        checks.append(check_peering(out, connections, peerings))  # type: ignore[arg-type]
    sql = _guard("sql_instance", checks, lambda: seam.sql_instance(out.sql_instance_name))
    if isinstance(sql, SqlInstance):
        checks += [check_sql_instance(out, sql), check_server_ca(out, sql)]

    probe: Optional[VmProbe] = None
    running = isinstance(vm, VmInstance) and vm.status == "RUNNING"
    containers = ["convex-backend"] + (["cloudsql-proxy"] if out.connection_mode == "proxy" else [])
    if ssh and running:
        result = _guard("tcp", checks, lambda: seam.probe(out.vm_name, out.vm_zone, probe_targets(out), containers))
        if isinstance(result, VmProbe):
            probe = result
            checks += [check_tcp(out, probe), check_proxy(out, probe), check_containers(out, probe, containers),
                       check_memory(out, probe), check_disks(out, probe), check_backend_metrics(out, probe),
                       check_upgrade(out, probe)]
    else:
        checks.append(skipped("tcp", "--no-ssh" if not ssh else "the VM is not running"))
    checks.append(check_version(out, version_fetcher(out.convex_url), probe))

    if not postgres or not ssh or probe is None or not isinstance(vm, VmInstance):
        checks.append(skipped("postgres_login", "needs --ssh and a running VM"))
        return checks
    checks += _postgres(out, seam, vm, probe, sql if isinstance(sql, SqlInstance) else None)
    return checks


def _postgres(out: StackOutputs, seam: GcloudSeam, vm: VmInstance, probe: VmProbe, sql: Optional[SqlInstance]) -> list[Check]:
    from .pg import PgTarget, postgres_checks

    config = vm.metadata_env("convex-gcp-config")
    backend = vm.metadata_env("convex-backend-env")
    pool = int(backend.get("POSTGRES_MAX_CONNECTIONS", "128"))
    if out.connection_mode == "proxy":
        if not probe.proxy_ip:
            return [failed("postgres_login", "the proxy container has no address on the convex network", "The proxy is not running: see containers and proxy_ready.")]
        remote_host, sslmode, expect_tls = probe.proxy_ip, "disable", False
    else:
        remote_host, sslmode, expect_tls = out.sql_private_ip, ("verify-ca" if out.connection_mode == "ssl" else "prefer"), out.connection_mode == "ssl"
    password: Optional[str] = None
    secret_id = config.get("DB_PASSWORD_SECRET_ID", "")
    if secret_id:
        try:
            password = seam.secret(secret_id).rstrip("\n")
        except SeamError as error:
            return [failed("postgres_login", f"cannot read {secret_id}: {error}", "You need roles/secretmanager.secretAccessor on the password secret.")]
    with tempfile.TemporaryDirectory() as tmp:
        ca_file = None
        if sslmode == "verify-ca" and sql is not None and sql.server_ca_cert:
            ca_file = str(Path(tmp) / "server-ca.pem")
            Path(ca_file).write_text(sql.server_ca_cert)
        try:
            with seam.tunnel(out.vm_name, out.vm_zone, remote_host, PG_PORT) as local_port:
                target = PgTarget("127.0.0.1", local_port, out.database_user, out.database_name, password, sslmode, ca_file, instance=out.sql_instance_name)
                return postgres_checks(target, pool, expect_tls)
        except SeamError as error:
            return [failed("postgres_login", f"no SSH tunnel to {remote_host}:{PG_PORT}: {error}", "Check IAP and OS Login access to the VM (docs/doctor.md).")]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.doctor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stack")
    parser.add_argument("--outputs", help="a file with `pulumi stack output --json` instead of running pulumi")
    parser.add_argument("--no-ssh", action="store_true", help="skip the checks that need SSH to the VM through IAP")
    parser.add_argument("--no-postgres", action="store_true", help="skip the Postgres login checks")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    options = parser.parse_args(argv)
    # Every check asks Google's APIs through gcloud; the outputs come from pulumi unless --outputs.
    clis.require("tools.doctor", ["gcloud"] + ([] if options.outputs else ["pulumi"]))
    try:
        out = load_outputs(options.stack, options.outputs)
    except (ValueError, OSError) as error:
        print(f"doctor: {error}", file=sys.stderr)
        return 2
    checks = diagnose(out, GcloudSeam(out.project), ssh=not options.no_ssh, postgres=not options.no_postgres)
    print(json.dumps([c.as_dict() for c in checks], indent=1) if options.json else render(checks))
    return 1 if any(c.status == "fail" for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
