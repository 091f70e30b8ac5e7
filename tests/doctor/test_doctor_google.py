"""The doctor's Google-side checks, fed recorded gcloud responses through the seam."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tools.doctor import __main__ as doctor
from tools.doctor.checks import StackOutputs, check_server_ca, check_version
from tools.doctor.gcloud_seam import GcloudSeam, parse_probe, parse_sql_instance, probe_script

FIXTURES = Path(__file__).parent / "fixtures"
COMMANDS = {
    ("compute", "instances", "describe"): "compute_instances_describe.json",
    ("compute", "networks", "peerings"): "compute_networks_peerings_list.json",
    ("services", "vpc-peerings", "list"): "services_vpc_peerings_list.json",
    ("sql", "instances", "describe"): "sql_instances_describe.json",
    ("compute", "ssh"): "vm_probe.txt",
}


class FakeGcloud:
    """Answers each gcloud command from a recorded response; records what was asked."""

    def __init__(self, **edits):
        self.responses = {key: (FIXTURES / name).read_text() for key, name in COMMANDS.items()}
        for key, change in edits.items():
            prefix = next(k for k, v in COMMANDS.items() if v.startswith(key))
            original = self.responses[prefix]
            self.responses[prefix] = change(original) if callable(change) else change
        self.calls: list[list[str]] = []

    def __call__(self, args):
        self.calls.append(list(args))
        for prefix, text in self.responses.items():
            if tuple(args[: len(prefix)]) == prefix:
                return text
        raise AssertionError(f"unexpected gcloud call {args}")


def json_edit(mutate):
    def change(text):
        data = json.loads(text)
        mutate(data)
        return json.dumps(data)

    return change


def outputs(**changes) -> StackOutputs:
    data = json.loads((FIXTURES / "outputs.json").read_text())
    data.update(changes)
    return StackOutputs.from_json(data)


def run(fake: FakeGcloud, out: StackOutputs | None = None, version=(True, '"unknown"')):
    out = out or outputs()
    checks = doctor.diagnose(out, GcloudSeam(out.project, fake), postgres=False, version_fetcher=lambda url: version)
    return {c.name: c for c in checks}


def test_healthy_stack_passes_and_asks_gcloud_for_json_in_the_stack_project():
    fake = FakeGcloud()
    checks = run(fake)
    for name in ("vm_scopes", "vm_running", "vpc_peering", "sql_instance", "server_ca", "tcp", "proxy_ready", "containers", "convex_version"):
        assert checks[name].status == "pass", checks[name]
    assert checks["postgres_login"].status == "skip"
    describe = next(c for c in fake.calls if c[:3] == ["compute", "instances", "describe"])
    assert describe == ["compute", "instances", "describe", "convex-dev-vm", "--zone=asia-northeast1-a", "--project=example-convex-dev", "--format=json"]
    ssh = next(c for c in fake.calls if c[:2] == ["compute", "ssh"])
    assert "--tunnel-through-iap" in ssh and "--project=example-convex-dev" in ssh
    # The proxy reaches Cloud SQL on 3307, not 5432.
    assert "/dev/tcp/10.123.0.3/3307" in ssh[-1]


def test_seed_scope_fails_with_the_set_service_account_fix():
    def seed_scopes(data):
        data["serviceAccounts"][0]["scopes"] = [
            "https://www.googleapis.com/auth/devstorage.read_only",
            "https://www.googleapis.com/auth/logging.write",
            "https://www.googleapis.com/auth/sqlservice",
        ]

    check = run(FakeGcloud(compute_instances=json_edit(seed_scopes)))["vm_scopes"]
    assert check.status == "fail"
    assert "deprecated" in check.detail
    assert "--scopes=cloud-platform,sqlservice.admin" in check.fix


def test_stopped_vm_fails_and_skips_the_on_vm_checks():
    checks = run(FakeGcloud(compute_instances=json_edit(lambda d: d.update(status="TERMINATED"))))
    assert checks["vm_running"].status == "fail"
    assert "gcloud compute instances start convex-dev-vm" in checks["vm_running"].fix
    assert checks["tcp"].status == "skip"


def test_inactive_peering_fails_with_the_connect_command():
    def inactive(data):
        data[0]["peerings"][0]["state"] = "INACTIVE"

    check = run(FakeGcloud(compute_networks=json_edit(inactive)))["vpc_peering"]
    assert check.status == "fail" and "INACTIVE" in check.detail
    assert "gcloud services vpc-peerings connect --service=servicenetworking.googleapis.com --ranges=convex-dev-psa --network=convex-dev-vpc" in check.fix


def test_missing_connection_fails():
    assert run(FakeGcloud(services_vpc="[]"))["vpc_peering"].status == "fail"


def test_sql_instance_on_the_wrong_network_fails():
    def wrong(data):
        data["settings"]["ipConfiguration"]["privateNetwork"] = "projects/example-convex-dev/global/networks/default"

    check = run(FakeGcloud(sql_instances=json_edit(wrong)))["sql_instance"]
    assert check.status == "fail" and "--network=convex-dev-vpc" in check.fix


def test_stopped_sql_instance_fails():
    assert run(FakeGcloud(sql_instances=json_edit(lambda d: d.update(state="SUSPENDED"))))["sql_instance"].status == "fail"


def test_public_ip_warns():
    def public(data):
        data["settings"]["ipConfiguration"]["ipv4Enabled"] = True
        data["ipAddresses"].append({"ipAddress": "34.85.1.2", "type": "PRIMARY"})

    check = run(FakeGcloud(sql_instances=json_edit(public)))["sql_instance"]
    assert check.status == "warn" and "--no-assign-ip" in check.fix


def test_server_ca_expiry_and_ssl_mode():
    sql = parse_sql_instance(json.loads((FIXTURES / "sql_instances_describe.json").read_text()))
    out = outputs()
    assert check_server_ca(out, sql, now=datetime(2026, 9, 1, tzinfo=timezone.utc)).status == "pass"
    assert check_server_ca(out, sql, now=datetime(2036, 8, 1, tzinfo=timezone.utc)).status == "warn"
    assert check_server_ca(out, sql, now=datetime(2037, 1, 1, tzinfo=timezone.utc)).status == "fail"
    # ssl mode: the Google-managed internal CA has no SAN that rustls can check.
    ssl_out = outputs(connection_mode="ssl")
    plain = dataclasses.replace(sql, ssl_mode="ENCRYPTED_ONLY")
    check = check_server_ca(ssl_out, plain, now=datetime(2026, 9, 1, tzinfo=timezone.utc))
    assert check.status == "fail" and "GOOGLE_MANAGED_CAS_CA" in check.fix
    # plaintext mode with an instance that only takes client certificates: mismatch.
    assert check_server_ca(outputs(connection_mode="plaintext"), sql).status == "fail"


def test_proxy_not_ready_and_restarts():
    probe = "tcp.10.123.0.3:3307=fail\nproxy_ready=503\nlocal_version=fail\ncontainer.convex-backend=restarting 7\ncontainer.cloudsql-proxy=running 3\nproxy_ip=172.18.0.2\n"
    checks = run(FakeGcloud(vm_probe=probe), version=(False, "timed out"))
    assert checks["tcp"].status == "fail"
    assert checks["tcp"].detail.startswith("Cloud SQL unreachable")
    # The proxy restarting (its --run-connection-test fails) is named as what it is.
    assert checks["proxy_ready"].status == "fail" and checks["proxy_ready"].detail.startswith("Cloud SQL unreachable")
    assert "peering" in checks["proxy_ready"].fix and "roles/cloudsql.client" in checks["proxy_ready"].fix
    assert checks["containers"].status == "fail" and "convex-backend is restarting" in checks["containers"].detail
    assert checks["convex_version"].status == "fail" and "on the VM too" in checks["convex_version"].detail


def test_proxy_not_ready_without_restarts_points_at_scopes():
    probe = "proxy_ready=503\nlocal_version=fail\ncontainer.convex-backend=running 0\ncontainer.cloudsql-proxy=running 0\n"
    checks = run(FakeGcloud(vm_probe=probe), version=(False, "timed out"))
    assert checks["proxy_ready"].status == "fail" and "ACCESS_TOKEN_SCOPE_INSUFFICIENT" in checks["proxy_ready"].fix


def test_probe_script_reads_restarts_from_systemd():
    from tools.doctor.gcloud_seam import probe_script

    text = probe_script([("10.0.0.3", 3307)], ["convex-backend"])
    assert "systemctl show -p NRestarts --value convex-backend.service" in text
    assert '"convex-db"' in text and "RestartCount" not in text


def test_version_reachable_on_vm_but_not_from_here_blames_the_firewall():
    probe = parse_probe("local_version={\"version\":\"x\"}\n")
    check = check_version(outputs(), (False, "timed out"), probe)
    assert check.status == "fail" and "apiSourceRanges" in check.fix


def test_gcloud_errors_become_failed_checks():
    def broken(args):
        from tools.doctor.gcloud_seam import SeamError

        raise SeamError("ERROR: (gcloud.compute.instances.describe) PERMISSION_DENIED")

    out = outputs()
    checks = doctor.diagnose(out, GcloudSeam(out.project, broken), postgres=False, version_fetcher=lambda url: (True, "ok"))
    assert any(c.status == "fail" and "PERMISSION_DENIED" in c.detail for c in checks)


def test_probe_script_round_trip():
    script = probe_script([("10.0.0.3", 3307)], ["convex-backend"])
    assert "timeout 5 bash -c 'exec 3<>/dev/tcp/10.0.0.3/3307'" in script
    assert "{{.State.Status}}" in script and "NRestarts" in script
    probe = parse_probe((FIXTURES / "vm_probe.txt").read_text())
    assert probe.tcp == {"10.123.0.3:3307": True}
    assert probe.containers["convex-backend"] == ("running", 0)
    assert probe.proxy_ip == "172.18.0.2"


def test_metadata_gives_pool_and_password_secret():
    seam = GcloudSeam("example-convex-dev", FakeGcloud())
    vm = seam.instance("convex-dev-vm", "asia-northeast1-a")
    assert vm.metadata_env("convex-backend-env")["POSTGRES_MAX_CONNECTIONS"] == "36"
    assert vm.metadata_env("convex-gcp-config")["DB_PASSWORD_SECRET_ID"].endswith("/secrets/convex-dev-db-password")


def test_outputs_missing_keys_is_a_clear_error():
    with pytest.raises(ValueError, match="sql_private_ip"):
        StackOutputs.from_json({"convex_url": "x"})


def test_cli_with_outputs_file_and_no_ssh(monkeypatch, capsys):
    fake = FakeGcloud()
    monkeypatch.setattr(doctor, "GcloudSeam", lambda project: GcloudSeam(project, fake))
    monkeypatch.setattr(doctor, "fetch_version", lambda url: (True, '"unknown"'))
    assert doctor.main(["dev", "--outputs", str(FIXTURES / "outputs.json"), "--no-ssh"]) == 0
    shown = capsys.readouterr().out
    assert "[PASS] vm_scopes" in shown and "[SKIP] tcp" in shown
    assert not any(c[:2] == ["compute", "ssh"] for c in fake.calls)


def test_cli_exits_1_on_a_failure(monkeypatch, capsys):
    fake = FakeGcloud(sql_instances=json_edit(lambda d: d.update(state="SUSPENDED")))
    monkeypatch.setattr(doctor, "GcloudSeam", lambda project: GcloudSeam(project, fake))
    monkeypatch.setattr(doctor, "fetch_version", lambda url: (True, "ok"))
    assert doctor.main(["dev", "--outputs", str(FIXTURES / "outputs.json"), "--no-ssh", "--json"]) == 1
    assert any(c["name"] == "sql_instance" and c["status"] == "fail" for c in json.loads(capsys.readouterr().out))


# --------------------------------------------------------------------------- what the alerts watch

def test_healthy_vm_signals_pass():
    checks = run(FakeGcloud())
    for name in ("vm_memory", "vm_disks", "backend_metrics"):
        assert checks[name].status == "pass", checks[name]
    assert "42 requests, 0 answered 5xx" in checks["backend_metrics"].detail


@pytest.mark.parametrize("lines, name, status, fix", [
    ("memory_percent=93\noom_kills=0\n", "vm_memory", "warn", "vm.machineType"),
    ("memory_percent=60\noom_kills=2\noom_last=[ 812.1] Out of memory: Killed process 4242 (convex-local-ba) total-vm:9000000kB, anon-rss:3900000kB, file-rss:0kB\n",
     "vm_memory", "fail", "vm.machineType"),
    ("disk.data=97\ndisk.boot=40\n", "vm_disks", "fail", "vm.dataDiskSizeGb"),
    ("disk.data=20\ndisk.boot=88\n", "vm_disks", "warn", "docker image prune"),
    ("metrics=fail\n", "backend_metrics", "fail", "convex-collector"),
    ('metric http_handle_duration_seconds_count{endpoint="/api/query",status="200"} 90\n'
     'metric http_handle_duration_seconds_count{endpoint="/api/query",status="503"} 10\n', "backend_metrics", "fail", "cos_containers"),
    ('metric http_handle_duration_seconds_count{status="200"} 90\nmetric postgres_get_connection_seconds_sum{status="success"} 300\n'
     'metric postgres_get_connection_seconds_count{status="success"} 100\n', "backend_metrics", "warn", "convex.poolSize"),
])
def test_vm_signals_name_their_fix(lines, name, status, fix):
    base = "proxy_ready=200\nlocal_version=x\ncontainer.convex-backend=running 0\ncontainer.cloudsql-proxy=running 0\n"
    checks = run(FakeGcloud(vm_probe=base + lines))
    assert checks[name].status == status, checks[name]
    assert fix in checks[name].fix


def test_signals_script_runs_and_reads_what_the_alerts_read(tmp_path):
    """The probe's signal part, run by bash for real: a meminfo, a mounted directory (df), a kernel
    log with an OOM kill as the kernel prints it (node-problem-detector config/kernel-monitor.json
    OOMKilling pattern) and a fake backend serving /metrics in the pinned format."""
    import subprocess
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from threading import Thread

    from tests.fakes.convex_metrics import exposition
    from tools.doctor.gcloud_seam import signals_script

    (tmp_path / "meminfo").write_text("MemTotal:        4000000 kB\nMemFree:          500000 kB\nMemAvailable:    1800000 kB\n"
                                      "Buffers:          100000 kB\nCached:          1200000 kB\nSlab:             200000 kB\n")
    (tmp_path / "kmsg").write_text("[  12.0] eth0: link up\n[ 812.1] Out of memory: Killed process 4242 (convex-local-ba) "
                                   "total-vm:9000000kB, anon-rss:3900000kB, file-rss:0kB, shmem-rss:0kB\n")
    body = exposition(requests_5xx=30).encode()

    class Convex(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Convex)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        script = signals_script(meminfo=str(tmp_path / "meminfo"), mounts={"data": str(tmp_path)}, kernel_log=f"cat {tmp_path / 'kmsg'}",
                                metrics_url=f"http://127.0.0.1:{server.server_address[1]}/metrics")
        text = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60).stdout
    finally:
        server.shutdown()
        server.server_close()
    probe = parse_probe(text)
    # (4000000-500000-100000-1200000-200000)/4000000 = 50%
    assert probe.memory_percent == 50
    assert 0 <= probe.disks["data"] <= 100
    assert probe.oom_kills == 1 and "Killed process 4242 (convex-local-ba)" in probe.oom_last
    assert probe.metrics and all(line.split("{")[0].split(" ")[0] in (
        "http_handle_duration_seconds_count", "isolate_out_of_memory_total", "postgres_get_connection_seconds_sum", "postgres_get_connection_seconds_count")
        for line in probe.metrics)
    from tools.doctor.checks import check_backend_metrics, check_memory

    out = outputs()
    assert check_memory(out, probe).status == "fail"
    metrics = check_backend_metrics(out, probe)
    # 42 answered 200, 30 answered 500 (tests/fakes/convex_metrics.py): above the 5% the alert pages on.
    assert metrics.status == "fail" and "72 requests, 30 answered 5xx" in metrics.detail
