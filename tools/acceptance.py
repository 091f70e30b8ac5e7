"""Acceptance run: deploy an ephemeral stack for real, prove it works, always tear it down.
Like terraform-google-modules' blueprint tests (real deploy, assertions, teardown). The GitHub
workflow .github/workflows/acceptance.yml runs exactly this (docs/acceptance.md).

    python -m tools.acceptance local --out acceptance-out
    python -m tools.acceptance gcp --project my-sandbox --region asia-northeast1 --out acceptance-out

Steps: `pulumi stack init` (a fresh stack named acc-<target>-<id>), its config, `pulumi up
--event-log`, wait for `/version`, `tools.doctor` (gcp), `tools.e2e`, on gcp a backend restart whose
start line the restart alert's deployed log filter must find in Cloud Logging, the restore drill, and the VM
group's recreations (tools/recreation_check.py: an image bump from an older COS build and an autoheal, each
recreating the VM on the same name, IP and data disk, with the seconds /version went unanswered), then ALWAYS `pulumi destroy`
and `pulumi stack rm`. Writes report.json (steps, exit codes, time to healthy, per-resource
durations from the engine's event log) and the event log itself to --out. Exit 1 when any step,
teardown included, failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import yaml

from convex_gcp.settings import resource_prefix
from tools import clis, e2e, recreation_check

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "convex-gcp"


@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass
class Report:
    target: str
    stack: str
    steps: list[Step] = field(default_factory=list)
    time_to_healthy_seconds: Optional[float] = None
    resources: list[dict[str, Any]] = field(default_factory=list)
    e2e: dict[str, Any] = field(default_factory=dict)
    # The restore drill (tools/restore_drill.py): RPO and RTO of a real export, loss and restore.
    drill: dict[str, Any] = field(default_factory=dict)
    rpo_seconds: Optional[float] = None
    rto_seconds: Optional[float] = None

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(step.ok for step in self.steps)


# --------------------------------------------------------------------------- pure parts


def stack_name(target: str, run_id: str = "") -> str:
    """acc-<target>-<8 hex>: unique per run and short enough for resource prefixes (16 characters)."""
    # The LAST 8 characters: GitHub run ids are increasing numbers, so their first digits repeat.
    suffix = (run_id or uuid.uuid4().hex)[-8:].lower()
    return f"acc-{'gcp' if target == 'gcp' else 'loc'}-{suffix}"


def stack_config(target: str, project: str = "", region: str = "", zone: str = "", cos_from: str = "") -> dict[str, Any]:
    """The ephemeral stack's config: the committed local or dev stack, made disposable."""
    base = yaml.safe_load((ROOT / f"Pulumi.{'local' if target == 'local' else 'dev'}.yaml").read_text())["config"]
    config = dict(base)
    if target == "gcp":
        if not project or not region:
            raise SystemExit("gcp acceptance needs --project and --region (repository variables in CI)")
        config["gcp:project"], config["gcp:region"] = project, region
        vm = dict(config.get(f"{PROJECT}:vm") or {})
        vm["zone"] = zone or f"{region}-a"
        if cos_from:
            # Deployed from an older COS build; recreation_steps bumps it to the pinned one (docs/updates.md).
            vm["image"] = cos_from
        # Snapshots outlive the disk (keepOnDiskDelete) and would be billed after teardown.
        vm["dataDiskSnapshots"] = {"enabled": False}
        config[f"{PROJECT}:vm"] = vm
        config[f"{PROJECT}:environment"] = "dev"  # no deletion protection: the run must be able to destroy
        # IAM login's grant step needs the bootstrap's grant account for the stack and the VM's right to act
        # as it (docs/security.md, "Database"); an ephemeral stack has neither, so the run logs in with a
        # generated password, which only its throwaway state holds.
        config[f"{PROJECT}:iamAuth"] = False
        # The exports bucket outlives the stack (retain_on_delete, components/exports.py): unlocked, and
        # emptied by its lifecycle a day after the drill's export.
        config[f"{PROJECT}:exports"] = {"intervalHours": 12, "retentionDays": 1, "locked": False}
        # The alerts are what the run checks against real logs (restart_alert_step).
        config[f"{PROJECT}:monitoring"] = {**(config.get(f"{PROJECT}:monitoring") or {}), "enabled": True}
    return config


def resource_timings(event_log: str) -> list[dict[str, Any]]:
    """Per-resource durations from `pulumi up --event-log`: one apitype.EngineEvent JSON per line
    (json.Encoder in startEventLogger), each with `sequence` and `timestamp` (Unix seconds); a step
    starts at resourcePreEvent and ends at resOutputsEvent or resOpFailedEvent for the same URN
    (sdk/go/common/apitype/events.go). Whole seconds: sub-second steps show as 0."""
    started: dict[str, tuple[int, str, str]] = {}
    timings = []
    for line in event_log.splitlines():
        if not line.strip():
            continue
        event = json.loads(line)
        for kind in ("resourcePreEvent", "resOutputsEvent", "resOpFailedEvent"):
            body = event.get(kind)
            if not body or body.get("planning"):
                continue
            meta = body["metadata"]
            if kind == "resourcePreEvent":
                started[meta["urn"]] = (event["timestamp"], meta.get("op", ""), meta.get("type", ""))
            elif meta["urn"] in started:
                begin, op, typ = started.pop(meta["urn"])
                timings.append({"urn": meta["urn"], "type": typ, "op": op, "seconds": event["timestamp"] - begin,
                                "failed": kind == "resOpFailedEvent"})
    return sorted(timings, key=lambda t: -t["seconds"])


# --------------------------------------------------------------------------- the run


class Runner:
    def __init__(self, target: str, stack: str, out: Path, env: dict[str, str], timeout: float, project_dir: Path):
        self.target, self.stack, self.out, self.env, self.timeout = target, stack, out, env, timeout
        self.project_dir = project_dir
        self.report = Report(target, stack)

    def step(self, name: str, command: list[str], cwd: Optional[Path] = None, log_stdout: bool = True) -> subprocess.CompletedProcess:
        start = time.monotonic()
        result = subprocess.run(command, cwd=cwd or ROOT, env=self.env, capture_output=True, text=True, timeout=self.timeout)
        # The log is part of the uploaded artifact: never write output that holds secrets.
        (self.out / f"{name}.log").write_text((result.stdout if log_stdout else "[stdout not kept: it holds secrets]\n") + result.stderr)
        self.report.steps.append(Step(name, result.returncode == 0, round(time.monotonic() - start, 3),
                                      "" if result.returncode == 0 else f"exit {result.returncode}: {result.stderr.strip()[-1500:]}"))
        return result

    def pulumi(self, name: str, *args: str) -> bool:
        return self.step(name, ["pulumi", *args, "--stack", self.stack, "--non-interactive"], cwd=self.project_dir).returncode == 0

    def record(self, name: str, ok: bool, seconds: float, detail: str = "") -> None:
        self.report.steps.append(Step(name, ok, round(seconds, 3), detail))


def write_stack_file(project_dir: Path, stack: str, config: dict[str, Any]) -> Path:
    """Pulumi.<stack>.yaml, as the committed stacks are written (objects stay objects); `pulumi
    stack init` adds its secrets-provider keys to it and `pulumi stack rm` deletes it."""
    path = project_dir / f"Pulumi.{stack}.yaml"
    path.write_text("# Ephemeral acceptance stack (tools/acceptance.py); removed with the stack.\n" + yaml.safe_dump({"config": config}, sort_keys=False))
    return path


def run(target: str, out: Path, project: str = "", region: str = "", zone: str = "", run_id: str = "",
        timeout: float = 1800, database_url_for_gcp=None, project_dir: Path = ROOT, secrets_provider: str = "",
        tunnels_for_gcp=None, drill=None, cos_from: Optional[str] = None) -> Report:
    out.mkdir(parents=True, exist_ok=True)
    stack = stack_name(target, run_id)
    # `--event-log` is registered only with PULUMI_DEBUG_COMMANDS set (pkg/cmd/pulumi up.go: env.DebugCommands).
    runner = Runner(target, stack, out, {**os.environ, "PULUMI_DEBUG_COMMANDS": "true"}, timeout, project_dir)
    report = runner.report
    created = False
    stack_file: Optional[Path] = None
    try:
        if target == "gcp" and cos_from is None:
            cos_from = recreation_check.previous_cos_image()
        stack_file = write_stack_file(project_dir, stack, stack_config(target, project, region, zone, cos_from or ""))
        created = runner.pulumi("stack-init", "stack", "init", stack, *([f"--secrets-provider={secrets_provider}"] if secrets_provider else []))
        if not created:
            return report
        event_log = out / "events.jsonl"
        start = time.monotonic()
        up_ok = runner.pulumi("up", "up", "--yes", "--skip-preview", "--event-log", str(event_log))
        if event_log.exists():
            report.resources = resource_timings(event_log.read_text())
        if not up_ok:
            return report
        result = runner.step("outputs", ["pulumi", "stack", "output", "--json", "--show-secrets", "--stack", stack], cwd=project_dir, log_stdout=False)
        if result.returncode != 0:
            return report
        outputs = json.loads(result.stdout)
        # A dev stack serves Convex only through IAP (docs/delivery.md): its convex_url is localhost.
        try:
            with (tunnels_for_gcp or iap_tunnels)(outputs, project) if target == "gcp" else contextlib.nullcontext():
                _check(runner, target, stack, out, outputs, start, timeout, database_url_for_gcp)
                if any(step.name == "e2e" and step.ok for step in report.steps):
                    restore_drill_step(runner, target, stack, outputs, project, drill)
                if target == "gcp":
                    recreation_steps(runner, stack, outputs, project, bool(cos_from))
                return report
        except Exception as error:  # the IAP tunnel did not open: recorded, then teardown runs
            runner.record("iap-tunnel", False, 0, f"{type(error).__name__}: {error}")
            return report
    finally:
        if created:
            # Always, whatever failed above. stack rm without --force refuses while resources remain,
            # so a failed destroy leaves the stack (and its state) for a human instead of orphaning resources.
            if runner.pulumi("destroy", "destroy", "--yes", "--skip-preview"):
                runner.pulumi("stack-rm", "stack", "rm", "--yes")
        if stack_file is not None and stack_file.exists() and (not created or report.steps[-1].name == "stack-rm" and report.steps[-1].ok):
            stack_file.unlink()  # kept only while a stack with resources still needs it
        (out / "report.json").write_text(json.dumps({**asdict(report), "ok": report.ok}, indent=1))


def _check(runner: Runner, target: str, stack: str, out: Path, outputs: dict[str, Any], start: float, timeout: float, database_url_for_gcp) -> Report:
    """/version, the doctor (gcp) and the end-to-end check of a deployed stack."""
    report = runner.report
    try:
        e2e.wait_for_version(outputs["convex_url"], timeout)
        report.time_to_healthy_seconds = round(time.monotonic() - start, 3)
        runner.record("version", True, report.time_to_healthy_seconds)
    except e2e.E2EError as error:
        runner.record("version", False, time.monotonic() - start, str(error))
        return report
    if target == "gcp":
        # GCP stacks export no secret values (docs/outputs.md), so the saved outputs may be kept.
        saved = out / "outputs.json"
        saved.write_text(json.dumps(outputs, indent=1))
        runner.step("doctor", [sys.executable, "-m", "tools.doctor", stack, "--outputs", str(saved)])
    begin = time.monotonic()
    try:
        opener = (database_url_for_gcp or gcp_database_url)(outputs) if target == "gcp" else contextlib.nullcontext(outputs.get("postgres_url", ""))
        with opener as database_url:
            result_e2e = e2e.run(stack, outputs, database_url, timeout=timeout)
    except Exception as error:  # a tunnel or gcloud failure: recorded, then teardown runs
        runner.record("e2e", False, time.monotonic() - begin, f"{type(error).__name__}: {error}")
        return report
    report.e2e = asdict(result_e2e)
    runner.record("e2e", not result_e2e.error, time.monotonic() - begin, result_e2e.error)
    if target == "gcp":
        restart_alert_step(runner, outputs, stack)
        convex_metrics_step(runner, outputs, stack)
    return report


def prometheus_query_url(project: str, query: str) -> str:
    """Managed Service for Prometheus' query API (the PromQL HTTP API on monitoring.googleapis.com)."""
    import urllib.parse

    return f"https://monitoring.googleapis.com/v1/projects/{project}/location/global/prometheus/api/v1/query?" + urllib.parse.urlencode({"query": query})


def has_series(answer: dict[str, Any]) -> bool:
    """A Prometheus API answer (status, data.result) with at least one series."""
    return answer.get("status") == "success" and bool((answer.get("data") or {}).get("result"))


def convex_metrics_step(runner: Runner, outputs: dict[str, Any], stack: str, wait: float = 900, poll: float = 30) -> None:
    """The Convex metrics path on a real VM (rewrite, collector, Managed Prometheus, the VM's role): the
    requests the e2e check just made must arrive under the names and labels the Convex alerts query."""
    import urllib.request

    project = str(outputs.get("sql_connection_name", "")).split(":")[0]
    query = f'http_handle_duration_seconds_count_total{{namespace="{resource_prefix(stack)}",job="convex-backend"}}'
    begin, detail = time.monotonic(), ""
    while time.monotonic() - begin < wait:
        try:
            token = subprocess.run(["gcloud", "auth", "print-access-token"], capture_output=True, text=True, timeout=60)
        except OSError as error:
            detail = f"gcloud: {error}"
            break
        if token.returncode != 0:
            detail = token.stderr.strip()[-500:]
            break
        request = urllib.request.Request(prometheus_query_url(project, query), headers={"Authorization": f"Bearer {token.stdout.strip()}"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 (Google's API)
                if has_series(json.loads(response.read())):
                    runner.record("convex-metrics", True, time.monotonic() - begin, query)
                    return
                detail = f"no series for {query} yet"
        except (OSError, ValueError) as error:
            detail = f"{type(error).__name__}: {error}"
        time.sleep(poll)
    runner.record("convex-metrics", False, time.monotonic() - begin, detail)


def restore_drill_step(runner: Runner, target: str, stack: str, outputs: dict[str, Any], project: str, drill=None) -> None:
    """Write rows and a file, export (on GCP: the VM's own export service and the object in the exports
    bucket), lose everything, restore with tools.restore, read back; RPO and RTO go to the report."""
    from tools import restore_drill, snapshots

    begin = time.monotonic()
    try:
        deployment = snapshots.Deployment(outputs["convex_url"], e2e.admin_key(outputs))
        result = (drill or restore_drill.run)(stack, outputs, deployment, restore_drill.for_stack(target, outputs, project))
    except Exception as error:  # a gcloud or tunnel failure: recorded, then teardown runs
        runner.record("restore-drill", False, time.monotonic() - begin, f"{type(error).__name__}: {error}")
        return
    runner.report.drill = asdict(result)
    runner.report.rpo_seconds, runner.report.rto_seconds = result.rpo_seconds, result.rto_seconds
    runner.record("restore-drill", not result.error, time.monotonic() - begin, result.error)


def recreation_steps(runner: Runner, stack: str, outputs: dict[str, Any], project: str, from_older_image: bool,
                     autoheal_timeout: float = 1500) -> None:
    """An image bump, then an autoheal, of the VM group on the real project (tools/recreation_check.py)."""
    vm, zone = outputs.get("vm_name", ""), outputs.get("vm_zone", "")
    data_disk, internal_ip = f"{resource_prefix(stack)}-data", outputs.get("vm_internal_ip", "")

    def recreation(name: str, change: Callable[[], Optional[str]], timeout: float, precondition: Optional[str] = None) -> None:
        begin = time.monotonic()
        if precondition:
            runner.record(name, False, 0, precondition)
            return
        try:
            before = recreation_check.describe(vm, zone, project)
            with recreation_check.Sampler(outputs["convex_url"]) as sampler:
                failed = change()
                if failed:
                    runner.record(name, False, time.monotonic() - begin, failed)
                    return
                done = recreation_check.wait_for(
                    lambda: recreation_check.describe(vm, zone, project).get("creationTimestamp") != before.get("creationTimestamp"), timeout)
                e2e.wait_for_version(outputs["convex_url"], timeout)
            problems = ([] if done else ["the group did not recreate the VM in time"]) + recreation_check.recreated(
                before, recreation_check.describe(vm, zone, project), data_disk, internal_ip)
            span = recreation_check.unanswered_span(sampler.samples)
            (runner.out / f"{name}.samples.json").write_text(json.dumps(sampler.samples))
            runner.record(name, not problems, time.monotonic() - begin,
                          "; ".join(problems) or f"/version unanswered for {span if span is not None else 0} s; same name, IP and data disk")
        except Exception as error:  # gcloud, IAP or the tunnel: recorded, then teardown runs
            runner.record(name, False, time.monotonic() - begin, f"{type(error).__name__}: {error}")

    def bump() -> Optional[str]:
        if not runner.pulumi("image-bump-config", "config", "rm", "--path", f"{PROJECT}:vm.image"):
            return "pulumi config rm failed"
        return None if runner.pulumi("image-bump-up", "up", "--yes", "--skip-preview") else "pulumi up failed"

    def kill_backend() -> Optional[str]:
        # Nothing runs Convex and no run is in progress: vm/health/health.sh answers 503 from now on.
        result = runner.step("autoheal-stop-backend", ["gcloud", "compute", "ssh", vm, f"--zone={zone}", "--tunnel-through-iap", f"--project={project}",
                                                       "--command", "sudo systemctl stop convex-backend.service"])
        return None if result.returncode == 0 else "could not stop the backend over IAP SSH"

    recreation("image-bump", bump, runner.timeout,
               None if from_older_image else "no older COS build to start from (gcloud compute images describe-from-family cos-121-lts failed)")
    recreation("autoheal", kill_backend, autoheal_timeout)


def summary_markdown(report: dict[str, Any]) -> str:
    """The workflow's job summary ($GITHUB_STEP_SUMMARY) from report.json: outcome, time to healthy, the
    restore drill's RPO and RTO, and each step."""
    def secs(value: Any) -> str:
        return "n/a" if value is None else f"{value:.1f} s"

    drill = report.get("drill") or {}
    lines = [f"## Acceptance `{report.get('stack', '?')}`: {'passed' if report.get('ok') else 'FAILED'}", "",
             "| Measure | Value |", "|---|---|",
             f"| Time to healthy | {secs(report.get('time_to_healthy_seconds'))} |",
             f"| Restore drill RPO (newest export's age at the loss) | {secs(report.get('rpo_seconds'))} |",
             f"| Restore drill RTO (restore until the rows and the file read back) | {secs(report.get('rto_seconds'))} |",
             f"| Drill export | {drill.get('export') or 'n/a'} |", "",
             "| Step | OK | Seconds | Detail |", "|---|---|---|---|"]
    for step in report.get("steps", []):
        detail = str(step.get("detail", "")).replace("|", "\\|").replace("\n", " ")[:200]
        lines.append(f"| {step['name']} | {'yes' if step['ok'] else 'NO'} | {step['seconds']} | {detail} |")
    return "\n".join(lines) + "\n"


RESTART_POLICY = "convex-backend (re)started"  # components/monitoring.py: f"{prefix}: {container} (re)started"


def matched_log_filter(policies: list[dict[str, Any]], display_name: str) -> str:
    """The log-match filter of the deployed policy with this display name (`gcloud alpha monitoring
    policies list --format=json`: AlertPolicy resources, conditions[].conditionMatchedLog.filter)."""
    for policy in policies:
        if policy.get("displayName") == display_name:
            for condition in policy.get("conditions", []):
                if "conditionMatchedLog" in condition:
                    return condition["conditionMatchedLog"]["filter"]
    raise LookupError(f"no deployed alert policy {display_name!r} with a log-match condition")


def restart_alert_step(runner: Runner, outputs: dict[str, Any], stack: str, wait: float = 900, poll: float = 30) -> None:
    """Restart the backend and wait until the restart alert's own filter, as deployed, matches the new
    start line in Cloud Logging: the part no offline test can prove (log name, container field, VM
    label written by COS's logging agent; docs/vm-runtime.md). Monitoring opens the incident from
    exactly these entries; its incidents have no public list API, so the entries are what is read."""
    # project:region:instance (docs/outputs.md), as the doctor reads it.
    project = str(outputs.get("sql_connection_name", "")).split(":")[0]
    vm, zone = outputs.get("vm_name", ""), outputs.get("vm_zone", "")
    flags = [f"--project={project}"] if project else []
    restart = runner.step("restart-backend", ["gcloud", "compute", "ssh", vm, f"--zone={zone}", "--tunnel-through-iap", *flags,
                                              "--command", "sudo systemctl restart convex-backend"])
    if restart.returncode != 0:
        return
    begin = time.monotonic()
    display_name = f"{resource_prefix(stack)}: {RESTART_POLICY}"
    detail = ""
    while time.monotonic() - begin < wait:
        listed = subprocess.run(["gcloud", "alpha", "monitoring", "policies", "list", *flags, "--format=json"],
                                capture_output=True, text=True, timeout=180)
        try:
            log_filter = matched_log_filter(json.loads(listed.stdout or "[]"), display_name)
            read = subprocess.run(["gcloud", "logging", "read", log_filter, "--freshness=30m", "--limit=1", "--format=json", *flags],
                                  capture_output=True, text=True, timeout=180)
            if read.returncode == 0 and json.loads(read.stdout or "[]"):
                runner.record("restart-alert", True, time.monotonic() - begin, log_filter)
                return
            detail = f"no entry matches {log_filter!r} yet" if read.returncode == 0 else read.stderr.strip()[-1000:]
        except (LookupError, ValueError) as error:
            detail = f"{error} {listed.stderr.strip()[-500:]}"
        time.sleep(poll)
    runner.record("restart-alert", False, time.monotonic() - begin, detail)


@contextlib.contextmanager
def iap_tunnels(outputs: dict[str, Any], project: str) -> Iterator[None]:
    """`gcloud compute start-iap-tunnel` for the API and site ports on localhost, as docs/delivery.md
    has developers do; the firewall admits IAP on 3210 and 3211 (components/network.py)."""
    import socket
    import urllib.parse

    processes = []
    try:
        for key in ("convex_url", "convex_site_url"):
            port = urllib.parse.urlparse(outputs[key]).port
            command = ["gcloud", "compute", "start-iap-tunnel", outputs["vm_name"], str(port), f"--local-host-port=localhost:{port}",
                       f"--zone={outputs['vm_zone']}", *([f"--project={project}"] if project else [])]
            processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
            deadline = time.monotonic() + 60
            while True:
                if processes[-1].poll() is not None:
                    raise RuntimeError(f"the IAP tunnel to port {port} exited: {(processes[-1].stderr.read() if processes[-1].stderr else '')[-1000:]}")
                with contextlib.suppress(OSError), socket.create_connection(("localhost", port), timeout=1):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the IAP tunnel to port {port} did not open within 60 s")
                time.sleep(0.1)
        yield
    finally:
        for process in processes:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)


@contextlib.contextmanager
def gcp_database_url(outputs: dict[str, Any]) -> Iterator[str]:
    """The Convex database through an SSH tunnel over IAP, as tools.doctor reaches it."""
    from tools.doctor.__main__ import PG_PORT
    from tools.doctor.checks import StackOutputs, probe_targets
    from tools.doctor.gcloud_seam import GcloudSeam

    out = StackOutputs.from_json(outputs)
    seam = GcloudSeam(out.project)
    vm = seam.instance(out.vm_name, out.vm_zone)
    config = vm.metadata_env("convex-gcp-config")
    if out.connection_mode == "proxy":
        probe = seam.probe(out.vm_name, out.vm_zone, probe_targets(out), ["cloudsql-proxy"])
        host, sslmode = probe.proxy_ip, "disable"
    else:
        host, sslmode = out.sql_private_ip, "require"
    password = seam.secret(config["DB_PASSWORD_SECRET_ID"]).strip() if config.get("DB_PASSWORD_SECRET_ID") else ""
    with seam.tunnel(out.vm_name, out.vm_zone, host, PG_PORT) as port:
        yield database_url(out.database_user, password, port, out.database_name, sslmode)


def database_url(user: str, password: str, port: int, database: str, sslmode: str) -> str:
    from urllib.parse import quote

    auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
    return f"postgresql://{auth}@127.0.0.1:{port}/{database}?sslmode={sslmode}"


def cleanup(target: str, run_id: str, out: Path, project_dir: Path = ROOT, timeout: float = 1800) -> bool:
    """The workflow's `if: always()` backstop (a cancelled or timed-out job never reaches run()'s
    finally): destroy and remove this run's stack if it still exists. True when nothing is left."""
    out.mkdir(parents=True, exist_ok=True)
    stack = stack_name(target, run_id)
    runner = Runner(target, stack, out, dict(os.environ), timeout, project_dir)
    result = runner.step("cleanup-destroy", ["pulumi", "destroy", "--yes", "--skip-preview", "--stack", stack, "--non-interactive"], cwd=project_dir)
    if result.returncode != 0:
        # pulumi: "no stack named '<name>' found" when run() already removed it.
        return "no stack named" in result.stderr and stack in result.stderr
    removed = runner.step("cleanup-stack-rm", ["pulumi", "stack", "rm", "--yes", "--stack", stack, "--non-interactive"], cwd=project_dir).returncode == 0
    if removed:
        (project_dir / f"Pulumi.{stack}.yaml").unlink(missing_ok=True)
    return removed


def needed_clis(target: str, cleanup_only: bool = False) -> list[str]:
    """pulumi always; a full run also deploys examples/app (Node) and reaches the stack: Docker for
    local, gcloud (IAP tunnels, Secret Manager, the doctor) for gcp."""
    if cleanup_only:
        return ["pulumi"]
    return ["pulumi", "node", "npm", "npx", "docker" if target == "local" else "gcloud"]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.acceptance", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=["local", "gcp"])
    parser.add_argument("--cleanup", action="store_true", help="only destroy and remove this run's stack if it still exists")
    parser.add_argument("--secrets-provider", default=os.environ.get("ACCEPTANCE_SECRETS_PROVIDER", ""), help="for `pulumi stack init`, e.g. gcpkms://...")
    parser.add_argument("--out", default="acceptance-out")
    parser.add_argument("--project", default=os.environ.get("ACCEPTANCE_PROJECT", ""))
    parser.add_argument("--region", default=os.environ.get("ACCEPTANCE_REGION", ""))
    parser.add_argument("--zone", default=os.environ.get("ACCEPTANCE_ZONE", ""))
    parser.add_argument("--run-id", default=os.environ.get("GITHUB_RUN_ID", ""))
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for each pulumi command and for /version")
    parser.add_argument("--summary", action="store_true", help="print --out's report.json as the job summary (markdown) and exit")
    options = parser.parse_args(argv)
    if options.summary:
        report_file = Path(options.out) / "report.json"
        print(summary_markdown(json.loads(report_file.read_text())) if report_file.exists() else f"## Acceptance: no {report_file} (the run did not start)\n")
        return 0
    clis.require("tools.acceptance", needed_clis(options.target, options.cleanup))
    if options.cleanup:
        if not options.run_id:
            parser.error("--cleanup needs --run-id (GITHUB_RUN_ID in CI) to name the stack")
        return 0 if cleanup(options.target, options.run_id, Path(options.out), timeout=options.timeout) else 1
    report = run(options.target, Path(options.out), options.project, options.region, options.zone, options.run_id, options.timeout,
                 secrets_provider=options.secrets_provider)
    print(json.dumps({"stack": report.stack, "ok": report.ok, "time_to_healthy_seconds": report.time_to_healthy_seconds,
                      "rpo_seconds": report.rpo_seconds, "rto_seconds": report.rto_seconds,
                      "failed": [s.name for s in report.steps if not s.ok]}, indent=1))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
