"""The restore drill: write rows and a file, export, write once more, lose everything, restore, read back.
Reports RPO (how old the newest export was when the data was lost: what a real loss would have cost) and
RTO (from the start of the restore until the rows and the file read back). Needs examples/app deployed
(tools/e2e.py does it): `messages:send`/`byMarker` and `files:generateUploadUrl`/`save`/`byMarker`.

    python -m tools.restore <stack> --drill          # one command, local or GCP
    python -m tools.acceptance local|gcp             # runs it after the end-to-end check

The export is the stack's own: on GCP the VM's export service (vm/convex-export.sh, started through IAP SSH)
and the object it uploaded to the exports bucket; on a local stack the same routes called from here.
The loss is an import of an empty snapshot with replaceAll (every table and every file gone), the restore
tools.restore's, which first has to refuse: the deployment still holds data then.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from tools.snapshots import Deployment, RestoreError, deployment_contents, empty_export, export, import_zip, restore

# Where the VM keeps its export state and takes requests (vm/units/convex-export.service CONVEX_EXPORT_DIR).
VM_EXPORT_DIR = "/mnt/disks/convex-data/exports"
FILE_BYTES = b"convex-gcp restore drill\n" + bytes(range(256)) * 16


@dataclass
class DrillReport:
    stack: str
    marker: str = ""
    export: str = ""
    rows_written: int = 0
    rows_restored: int = 0
    file_restored: bool = False
    late_row_lost: bool = False
    refused_with_data: bool = False
    rpo_seconds: Optional[float] = None
    rto_seconds: Optional[float] = None
    steps: dict[str, float] = field(default_factory=dict)
    error: str = ""


Exporter = Callable[[Deployment, Path], tuple[int, str]]  # -> (start_ts ns, where it came from)


def api_exporter(deployment: Deployment, dest: Path) -> tuple[int, str]:
    start_ts = export(deployment, dest)
    return start_ts, f"{deployment.url}/api/export/zip/{start_ts}"


def vm_exporter(outputs: dict[str, Any], project: str = "") -> Exporter:
    """The VM's own export: request one, run the service through IAP SSH, fetch the object it uploaded."""

    def run(deployment: Deployment, dest: Path) -> tuple[int, str]:
        extra = [f"--project={project}"] if project else []
        command = f"sudo touch {VM_EXPORT_DIR}/requested && sudo systemctl start convex-export.service"
        # As tools.doctor's probe (tools/doctor/gcloud_seam.py ssh_args): IAP, no prompts (--quiet); sudo needs
        # roles/compute.osAdminLogin.
        ssh = subprocess.run(["gcloud", "compute", "ssh", outputs["vm_name"], f"--zone={outputs['vm_zone']}", "--tunnel-through-iap", "--quiet",
                              f"--command={command}", *extra], capture_output=True, text=True, timeout=3600, stdin=subprocess.DEVNULL)
        if ssh.returncode != 0:
            raise RestoreError(f"the VM's export service failed (journalctl -u convex-export): {ssh.stderr.strip()[-800:]}")
        listed = subprocess.run(["gcloud", "storage", "ls", f"gs://{outputs['exports_bucket']}/convex-exports/**", *extra],
                                capture_output=True, text=True, timeout=300)
        objects = [line.strip() for line in listed.stdout.splitlines() if line.strip().endswith(".zip")]
        if not objects:
            raise RestoreError(f"no export in gs://{outputs['exports_bucket']}: {listed.stderr.strip()[-300:]}")
        newest = max(objects, key=lambda name: int(name.rsplit("_", 1)[1].split(".")[0]))
        copied = subprocess.run(["gcloud", "storage", "cp", newest, str(dest), *extra], capture_output=True, text=True, timeout=3600)
        if copied.returncode != 0:
            raise RestoreError(f"gcloud storage cp {newest} failed: {copied.stderr.strip()[-300:]}")
        return int(newest.rsplit("_", 1)[1].split(".")[0]), newest

    return run


def upload_file(deployment: Deployment, data: bytes) -> str:
    """ctx.storage.generateUploadUrl() then POST the bytes: {"storageId"} (crates/local_backend/src/storage.rs storage_upload)."""
    url = deployment.mutation("files:generateUploadUrl", {})
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["storageId"]


def run(stack: str, outputs: dict[str, Any], deployment: Deployment, exporter: Optional[Exporter] = None, rows: int = 3,
        poll: float = 1.0, say: Callable[[str], None] = lambda line: None) -> DrillReport:
    report = DrillReport(stack, marker=f"drill-{uuid.uuid4().hex[:12]}")
    steps = report.steps

    def timed(name: str, call: Callable[[], Any]) -> Any:
        start = time.monotonic()
        try:
            return call()
        finally:
            steps[name] = round(time.monotonic() - start, 3)

    try:
        with tempfile.TemporaryDirectory(prefix="convex-drill-") as tmp:
            path, empty = Path(tmp) / "drill.zip", Path(tmp) / "empty.zip"

            def write() -> None:
                for i in range(rows):
                    deployment.mutation("messages:send", {"marker": report.marker, "body": f"row {i}"})
                deployment.mutation("files:save", {"marker": report.marker, "storageId": upload_file(deployment, FILE_BYTES)})

            timed("write", write)
            report.rows_written = rows
            start_ts, report.export = timed("export", lambda: (exporter or api_exporter)(deployment, path))
            # Written after the snapshot: a real loss now would lose it; the restore must not bring it back.
            deployment.mutation("messages:send", {"marker": report.marker, "body": "late"})
            try:
                restore(deployment, path, force=False, say=say, poll=poll)
            except RestoreError as refusal:
                report.refused_with_data = "refusing" in str(refusal)
            if not report.refused_with_data:
                raise RestoreError("tools.restore did not refuse a deployment holding data")
            tables = list(deployment_contents(deployment).tables)
            empty_export(tables, empty)
            lost_at = time.time()
            timed("wipe", lambda: import_zip(deployment, empty, "replaceAll", poll=poll, say=say))
            if not deployment_contents(deployment).empty:
                raise RestoreError(f"the wipe left data: {deployment_contents(deployment).describe()}")
            report.rpo_seconds = round(lost_at - start_ts / 1e9, 3)
            begin = time.monotonic()
            timed("restore", lambda: restore(deployment, path, force=False, say=say, poll=poll))
            restored = deployment.query("messages:byMarker", {"marker": report.marker})
            report.rows_restored = len(restored)
            report.late_row_lost = not any(row.get("body") == "late" for row in restored)
            files = deployment.query("files:byMarker", {"marker": report.marker})
            if files and files[0].get("url"):
                with urllib.request.urlopen(files[0]["url"], timeout=60) as response:
                    report.file_restored = response.read() == FILE_BYTES
            report.rto_seconds = round(time.monotonic() - begin, 3)
            if report.rows_restored != rows or not report.late_row_lost or not report.file_restored:
                raise RestoreError(f"read back {report.rows_restored}/{rows} rows (late row lost: {report.late_row_lost}), "
                                   f"file restored: {report.file_restored}")
    except RestoreError as error:
        report.error = str(error)
    except (OSError, ValueError, KeyError) as error:
        report.error = f"{type(error).__name__}: {error}"
    return report


def for_stack(target: str, outputs: dict[str, Any], project: str = "") -> Optional[Exporter]:
    """The exporter a stack's drill uses: the VM's on GCP, the API from here on a local stack."""
    return vm_exporter(outputs, project) if target == "gcp" and outputs.get("exports_bucket") else None

