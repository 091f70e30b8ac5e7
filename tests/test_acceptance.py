"""tools/acceptance.py against a stand-in pulumi CLI (tests/fakes/pulumi_cli.py) that records
calls and writes an engine event log, plus the e2e stand-ins (fake Convex backend, real Postgres)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import pytest

from convex_gcp.settings import load_settings
from tests.conftest import ROOT
from tests.test_e2e_script import ADMIN_KEY, PASSWORD, database_url, fake, outputs, stand_ins  # noqa: F401 (fixtures)
from tests.fakes import pulumi_cli
from tools import acceptance


@pytest.fixture
def pulumi(tmp_path, monkeypatch, stand_ins):  # noqa: F811
    bin_dir = tmp_path / "pulumi-bin"
    bin_dir.mkdir()
    pulumi_cli.install(bin_dir)
    (tmp_path / "state").mkdir()
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "Pulumi.yaml", project / "Pulumi.yaml")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PULUMI_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("FAKE_PULUMI_LOG", str(tmp_path / "pulumi.log"))
    monkeypatch.setenv("FAKE_PULUMI_OUTPUTS", str(tmp_path / "outputs.json"))
    monkeypatch.delenv("PULUMI_DEBUG_COMMANDS", raising=False)
    return project


def calls(tmp_path: Path) -> list[list[str]]:
    return [json.loads(line)["args"] for line in (tmp_path / "pulumi.log").read_text().splitlines()]


def commands(tmp_path: Path) -> list[str]:
    return [" ".join(a[:2]) if a[0] == "stack" else a[0] for a in calls(tmp_path)]


def local_outputs(tmp_path, fake, database_url) -> None:  # noqa: F811
    (tmp_path / "outputs.json").write_text(json.dumps({**outputs(fake), "postgres_url": database_url, "connection_mode": "plaintext"}))


def stub_drill(stack, outputs, deployment, exporter):
    """Stands in for tools/restore_drill.run where the e2e fake serves no snapshot routes (the real drill
    runs against tests/fakes/convex_snapshots.py in test_the_restore_drill_step_records_rpo_and_rto)."""
    from tools.restore_drill import DrillReport

    assert deployment.url == outputs["convex_url"] and deployment.admin_key == ADMIN_KEY
    return DrillReport(stack, marker="drill-x", export="local", rows_written=3, rows_restored=3, file_restored=True,
                       late_row_lost=True, refused_with_data=True, rpo_seconds=2.5, rto_seconds=1.25)


def run_local(tmp_path, project, **kwargs):
    kwargs.setdefault("drill", stub_drill)
    return acceptance.run("local", tmp_path / "out", run_id="abcdef12", timeout=30, project_dir=project, **kwargs)


def test_local_run_deploys_checks_records_and_tears_down(tmp_path, pulumi, fake, database_url):  # noqa: F811
    local_outputs(tmp_path, fake, database_url)
    report = run_local(tmp_path, pulumi)
    assert report.ok, report.steps
    assert report.stack == "acc-loc-abcdef12"
    assert commands(tmp_path) == ["stack init", "up", "stack output", "destroy", "stack rm"]
    up = calls(tmp_path)[1]
    assert up[up.index("--event-log") + 1] == str(tmp_path / "out" / "events.jsonl")
    assert {"--yes", "--skip-preview", "--non-interactive"} <= set(up) and up[up.index("--stack") + 1] == report.stack
    assert [s.name for s in report.steps] == ["stack-init", "up", "outputs", "version", "e2e", "restore-drill", "destroy", "stack-rm"]
    assert (report.rpo_seconds, report.rto_seconds) == (2.5, 1.25)
    assert report.time_to_healthy_seconds is not None
    assert [(r["type"], r["seconds"]) for r in report.resources] == [
        ("docker:index/container:Container", 30), ("docker:index/network:Network", 20), ("pulumi:pulumi:Stack", 10)]
    assert report.e2e["error"] == "" and report.e2e["marker"]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["ok"] is True and saved["resources"] == report.resources
    assert not (pulumi / f"Pulumi.{report.stack}.yaml").exists()


def test_the_stack_file_is_the_committed_local_config(tmp_path, pulumi, fake, database_url, monkeypatch):  # noqa: F811
    local_outputs(tmp_path, fake, database_url)
    monkeypatch.setenv("FAKE_PULUMI_FAIL", "destroy")
    report = run_local(tmp_path, pulumi)
    kept = pulumi / f"Pulumi.{report.stack}.yaml"
    import yaml

    assert yaml.safe_load(kept.read_text())["config"] == yaml.safe_load((ROOT / "Pulumi.local.yaml").read_text())["config"]


def test_no_secret_reaches_the_artifact(tmp_path, pulumi, fake, database_url):  # noqa: F811
    local_outputs(tmp_path, fake, database_url)
    run_local(tmp_path, pulumi)
    for path in (tmp_path / "out").iterdir():
        text = path.read_text()
        assert PASSWORD not in text, path.name
        assert ADMIN_KEY not in text, path.name


def test_a_failed_up_still_destroys_and_removes_the_stack(tmp_path, pulumi, monkeypatch):
    monkeypatch.setenv("FAKE_PULUMI_FAIL", "up")
    report = run_local(tmp_path, pulumi)
    assert not report.ok
    assert commands(tmp_path) == ["stack init", "up", "destroy", "stack rm"]
    assert report.resources[0]["failed"] is True
    assert [s.name for s in report.steps if not s.ok] == ["up"]


def test_a_failed_destroy_keeps_the_stack_for_a_human(tmp_path, pulumi, fake, database_url, monkeypatch):  # noqa: F811
    local_outputs(tmp_path, fake, database_url)
    monkeypatch.setenv("FAKE_PULUMI_FAIL", "destroy")
    report = run_local(tmp_path, pulumi)
    assert not report.ok
    # stack rm would be refused while resources remain; the stack file stays with the state.
    assert commands(tmp_path)[-1] == "destroy"
    assert (pulumi / f"Pulumi.{report.stack}.yaml").exists()


@pytest.mark.parametrize("fake", [{"drop_writes": True}], indirect=True)
def test_a_failed_e2e_fails_the_run_and_still_tears_down(tmp_path, pulumi, fake, database_url):  # noqa: F811
    local_outputs(tmp_path, fake, database_url)
    report = run_local(tmp_path, pulumi)
    assert not report.ok
    assert [s.name for s in report.steps if not s.ok] == ["e2e"]
    assert commands(tmp_path)[-2:] == ["destroy", "stack rm"]


def test_an_existing_stack_is_never_reused_or_destroyed(tmp_path, pulumi, monkeypatch):
    monkeypatch.setenv("FAKE_PULUMI_FAIL", "init")
    report = run_local(tmp_path, pulumi)
    assert not report.ok
    assert commands(tmp_path) == ["stack init"]
    assert not list(pulumi.glob("Pulumi.acc-*.yaml"))


def test_gcp_run_runs_the_doctor_and_e2e_through_the_tunnel(tmp_path, pulumi, fake, database_url):  # noqa: F811
    (tmp_path / "outputs.json").write_text(json.dumps({**outputs(fake), "connection_mode": "proxy"}))
    opened = []

    @contextlib.contextmanager
    def tunnel(outs):
        opened.append(outs["connection_mode"])
        yield database_url

    @contextlib.contextmanager
    def iap(outs, project):
        opened.append(f"iap {project}")
        yield

    report = acceptance.run("gcp", tmp_path / "out", project="sandbox-proj-1", region="asia-northeast1", run_id="1234567890",
                            timeout=30, database_url_for_gcp=tunnel, project_dir=pulumi, tunnels_for_gcp=iap, drill=stub_drill, cos_from="")
    names = [s.name for s in report.steps]
    assert names == ["stack-init", "up", "outputs", "version", "doctor", "e2e", "restart-backend", "convex-metrics", "restore-drill",
                     "image-bump", "autoheal", "destroy", "stack-rm"]
    assert opened == ["iap sandbox-proj-1", "proxy"]
    # No gcloud here: the doctor, the backend restart and the VM group's recreations fail, the run is red, and
    # teardown still ran.
    assert not report.ok and [s.name for s in report.steps if not s.ok] == ["doctor", "restart-backend", "convex-metrics", "image-bump", "autoheal"]
    assert "no older COS build" in next(s.detail for s in report.steps if s.name == "image-bump")
    assert json.loads((tmp_path / "out" / "outputs.json").read_text())["connection_mode"] == "proxy"


def test_ephemeral_gcp_config_is_valid_and_disposable():
    stack = acceptance.stack_name("gcp", "98765432101")
    config = acceptance.stack_config("gcp", "sandbox-proj-1", "asia-northeast1")
    flat = {k: json.dumps(v) if isinstance(v, (dict, list)) else str(v).lower() if isinstance(v, bool) else str(v) for k, v in config.items()}
    settings = load_settings(flat, stack)
    assert not settings.is_prod and not settings.sql_deletion_protection and not settings.vm_deletion_protection
    assert settings.vm.data_disk_snapshots.enabled is False
    # The run checks the restart alert against real logs: monitoring on in this dev stack.
    assert settings.monitoring_enabled
    assert settings.zone == "asia-northeast1-a"
    # Deployed from an older exact build when one is given, so the run can bump it to the pinned one.
    older = acceptance.stack_config("gcp", "sandbox-proj-1", "asia-northeast1", cos_from="cos-cloud/cos-121-18867-624-2")
    assert older["convex-gcp:vm"]["image"] == "cos-cloud/cos-121-18867-624-2"


def test_gcp_needs_a_project_and_region():
    with pytest.raises(SystemExit, match="--project and --region"):
        acceptance.stack_config("gcp")


def test_resource_timings_pair_steps_and_skip_planning():
    log = "\n".join(json.dumps(e) for e in [
        {"sequence": 0, "timestamp": 100, "preludeEvent": {"config": {}}},
        {"sequence": 1, "timestamp": 100, "resourcePreEvent": {"metadata": {"urn": "u1", "type": "t", "op": "create"}, "planning": True}},
        {"sequence": 2, "timestamp": 101, "resourcePreEvent": {"metadata": {"urn": "u1", "type": "t", "op": "create"}}},
        {"sequence": 3, "timestamp": 160, "resOutputsEvent": {"metadata": {"urn": "u1", "type": "t", "op": "create"}}},
        {"sequence": 4, "timestamp": 170, "resOutputsEvent": {"metadata": {"urn": "never-started", "type": "t", "op": "same"}}},
    ]) + "\n"
    assert acceptance.resource_timings(log) == [{"urn": "u1", "type": "t", "op": "create", "seconds": 59, "failed": False}]


def test_database_url_quotes_user_and_password():
    assert acceptance.database_url("convex-dev-vm@p.iam", "", 6000, "convex_dev", "disable") == "postgresql://convex-dev-vm%40p.iam@127.0.0.1:6000/convex_dev?sslmode=disable"
    assert acceptance.database_url("convex", "a/b", 1, "d", "require") == "postgresql://convex:a%2Fb@127.0.0.1:1/d?sslmode=require"


def test_cleanup_backstop_destroys_a_leftover_stack_and_is_a_no_op_after_a_clean_run(tmp_path, pulumi, monkeypatch):
    monkeypatch.setenv("FAKE_PULUMI_FAIL", "destroy")
    report = run_local(tmp_path, pulumi)  # no outputs file: the run fails after up, then destroy fails: the stack is left
    assert (pulumi / f"Pulumi.{report.stack}.yaml").exists()
    monkeypatch.setenv("FAKE_PULUMI_FAIL", "")
    assert acceptance.cleanup("local", "abcdef12", tmp_path / "out", project_dir=pulumi)
    assert commands(tmp_path)[-2:] == ["destroy", "stack rm"]
    assert not (pulumi / f"Pulumi.{report.stack}.yaml").exists()
    # Second time: the stack is gone, pulumi says so, nothing to do.
    assert acceptance.cleanup("local", "abcdef12", tmp_path / "out", project_dir=pulumi)


def test_cleanup_reports_a_stack_it_could_not_destroy(tmp_path, pulumi, monkeypatch):
    monkeypatch.setenv("FAKE_PULUMI_FAIL", "destroy")
    run_local(tmp_path, pulumi)
    assert not acceptance.cleanup("local", "abcdef12", tmp_path / "out", project_dir=pulumi)


def test_stack_names_differ_for_consecutive_run_ids():
    assert acceptance.stack_name("gcp", "12345678901") != acceptance.stack_name("gcp", "12345678902")
    assert acceptance.stack_name("gcp", "12345678901") == "acc-gcp-45678901"


def test_gcp_run_without_an_iap_tunnel_records_it_and_tears_down(tmp_path, pulumi, monkeypatch):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / "outputs.json").write_text(json.dumps({"convex_url": f"http://localhost:{port}", "convex_site_url": f"http://localhost:{port + 1}",
                                                       "vm_name": "convex-acc-vm", "vm_zone": "asia-northeast1-a"}))
    # A stand-in gcloud that fails like IAP does for a caller without roles/iap.tunnelResourceAccessor.
    gcloud = tmp_path / "pulumi-bin" / "gcloud"
    gcloud.write_text("#!/bin/sh\necho \"ERROR: (gcloud.compute.start-iap-tunnel) Error while connecting [4033: 'not authorized'].\" >&2\nexit 1\n")
    gcloud.chmod(0o755)
    report = acceptance.run("gcp", tmp_path / "out", project="sandbox-proj-1", region="asia-northeast1", run_id="1234567891",
                            timeout=30, project_dir=pulumi)
    assert [s.name for s in report.steps if not s.ok] == ["iap-tunnel"]
    assert "4033" in report.steps[-3].detail
    assert commands(tmp_path)[-2:] == ["destroy", "stack rm"]


def test_the_restart_alert_filter_is_read_from_the_deployed_policy():
    policies = [
        {"displayName": "convex-acc-gcp-1: convex-backend (re)started",
         "conditions": [{"conditionMatchedLog": {"filter": 'logName="projects/p/logs/cos_containers"'}}]},
        {"displayName": "convex-acc-gcp-1: Convex VM down", "conditions": [{"conditionAbsent": {"filter": "x"}}]},
    ]
    assert acceptance.matched_log_filter(policies, "convex-acc-gcp-1: convex-backend (re)started") == 'logName="projects/p/logs/cos_containers"'
    with pytest.raises(LookupError):
        acceptance.matched_log_filter(policies, "convex-acc-gcp-1: Convex VM down")
    # The name the step looks for is the one the program gives the policy.
    from components import monitoring
    assert "(re)started" in acceptance.RESTART_POLICY and "convex-backend" in monitoring.START_LINES


def test_the_restore_drill_step_records_rpo_and_rto(tmp_path, monkeypatch):
    """The real drill (tools/restore_drill.py) through the acceptance step, against a fake serving the pinned
    backend's export and import routes and the app's functions."""
    from tests.fakes.convex_snapshots import FakeConvexDeployment

    monkeypatch.setenv("CONVEX_SELF_HOSTED_ADMIN_KEY", ADMIN_KEY)
    convex = FakeConvexDeployment(ADMIN_KEY)
    try:
        runner = acceptance.Runner("local", "acc-loc-x", tmp_path, dict(os.environ), 30, tmp_path)
        acceptance.restore_drill_step(runner, "local", "acc-loc-x", {"convex_url": convex.url}, "")
        (step,) = runner.report.steps
        assert step.name == "restore-drill" and step.ok, step.detail
        assert runner.report.rpo_seconds is not None and runner.report.rto_seconds is not None
        assert runner.report.drill["late_row_lost"] and runner.report.drill["file_restored"]
        convex.export_fails = True
        acceptance.restore_drill_step(runner, "local", "acc-loc-x", {"convex_url": convex.url}, "")
        assert not runner.report.steps[-1].ok and "export ended failed" in runner.report.steps[-1].detail
    finally:
        convex.close()


def test_a_failed_drill_fails_the_run_and_teardown_still_runs(tmp_path, pulumi, fake, database_url):  # noqa: F811
    local_outputs(tmp_path, fake, database_url)

    def failing(stack, outputs, deployment, exporter):
        from tools.restore_drill import DrillReport
        return DrillReport(stack, error="read back 0/3 rows")

    report = run_local(tmp_path, pulumi, drill=failing)
    assert not report.ok and [s.name for s in report.steps if not s.ok] == ["restore-drill"]
    assert commands(tmp_path)[-2:] == ["destroy", "stack rm"]


def test_the_job_summary_shows_rpo_and_rto(tmp_path, pulumi, fake, database_url, capsys):  # noqa: F811
    local_outputs(tmp_path, fake, database_url)
    run_local(tmp_path, pulumi)
    assert acceptance.main(["local", "--summary", "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "| Restore drill RPO (newest export's age at the loss) | 2.5 s |" in text
    assert f"| Restore drill RTO (restore until the rows and the file read back) | {1.25:.1f} s |" in text
    assert "| restore-drill | yes |" in text


def test_the_convex_metrics_check_asks_managed_prometheus_what_the_alerts_query():
    from components.monitoring import convex_queries

    url = acceptance.prometheus_query_url("sandbox-proj-1", 'http_handle_duration_seconds_count_total{namespace="convex-acc-gcp-1",job="convex-backend"}')
    assert url.startswith("https://monitoring.googleapis.com/v1/projects/sandbox-proj-1/location/global/prometheus/api/v1/query?query=")
    assert acceptance.has_series({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "3"]}]}})
    assert not acceptance.has_series({"status": "success", "data": {"resultType": "vector", "result": []}})
    # The same name and selector as the 5xx alert.
    assert 'http_handle_duration_seconds_count_total{namespace="n",job="convex-backend"' in convex_queries("n", 0.05)["convex-errors"]
