"""tools/pre_upgrade.py: the deploy pipeline's copies before a new Convex backend image reaches the VM
(issue 24, part 3). The previews are built from the program's own dev plan (the instance template's
metadata as convex_gcp/runtime.py renders it), shaped like `pulumi preview --json` steps."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import time

import pytest

from tests.conftest import run_plan
from tools.pre_upgrade import Change, PreUpgradeError, backend_change, main, targets

NEW_DIGEST = "sha256:" + "7" * 64


@pytest.fixture(scope="module")
def dev():
    return run_plan("dev")


def _template(plan):
    (template,) = [r for r in plan.resources if r.type.endswith(("instanceTemplate:InstanceTemplate", "instance:Instance"))
                   and "convex-gcp-config" in (r.inputs.get("metadata") or {})]
    return template


def _disk(plan):
    (disk,) = [r for r in plan.resources if r.type == "gcp:compute/disk:Disk" and str(r.inputs.get("name", "")).endswith("-data")]
    return disk


def _with_backend(metadata: dict, digest: str) -> dict:
    """What a changed convex.version renders: the backend image's digest in the config and its unit."""
    new = copy.deepcopy(metadata)
    old_image = re.search(r"^BACKEND_IMAGE=(.*)$", new["convex-gcp-config"], re.M).group(1)
    new_image = old_image.rsplit("@", 1)[0] + "@" + digest
    for key, value in new.items():
        if isinstance(value, str):
            new[key] = value.replace(old_image, new_image)
    return new


def preview(plan, new_metadata: dict | None = None, replace: bool = True) -> dict:
    template, disk = _template(plan), _disk(plan)
    old = {"inputs": dict(template.inputs)}
    steps = [{"op": "same", "urn": disk.urn, "oldState": {"inputs": dict(disk.inputs)}, "newState": {"inputs": dict(disk.inputs)}}]
    if new_metadata is None:
        steps.append({"op": "same", "urn": template.urn, "oldState": old, "newState": old})
    else:
        new = {"inputs": {**template.inputs, "metadata": new_metadata}}
        if replace:  # the template is replaced create-first (components/convex_vm.py)
            steps += [{"op": "create-replacement", "urn": template.urn, "newState": new},
                      {"op": "replace", "urn": template.urn, "oldState": old, "newState": new},
                      {"op": "delete-replaced", "urn": template.urn, "oldState": old}]
        else:
            steps.append({"op": "update", "urn": template.urn, "oldState": old, "newState": new})
    return {"steps": steps, "changeSummary": {}}


OUTPUTS = {"sql_connection_name": "example-convex-dev:asia-northeast1:convex-dev-pg-a1b2", "sql_instance_name": "convex-dev-pg-a1b2",
           "vm_name": "convex-dev-vm", "vm_zone": "asia-northeast1-a", "exports_bucket": "convex-dev-exports-1a2b3c4d"}


class FakeGcloud:
    """Answers like gcloud for the calls the tool makes, and records them."""

    def __init__(self, fail: str = "", fresh_export: bool = True):
        self.calls: list[list[str]] = []
        self.fail = fail
        self.fresh_export = fresh_export
        self.started = time.time()

    def __call__(self, cmd: list[str]) -> subprocess.CompletedProcess:
        self.calls.append(cmd)
        joined = " ".join(cmd)
        if self.fail and self.fail in joined:
            return subprocess.CompletedProcess(cmd, 1, "", f"ERROR: (gcloud) {self.fail}: PERMISSION_DENIED")
        out = ""
        if cmd[1:3] == ["storage", "ls"]:
            old = int((self.started - 86400) * 1e9)
            new = int((self.started + 1) * 1e9) if self.fresh_export else old + 1
            out = f"gs://b/convex-exports/2026/12/06/snapshot_{old}.zip\ngs://b/convex-exports/2026/12/07/snapshot_{new}.zip\n"
        elif cmd[1:4] == ["sql", "backups", "list"]:
            out = "1765084800123\n"
        return subprocess.CompletedProcess(cmd, 0, out, "")


def test_no_change_of_the_backend_image_takes_nothing(dev):
    template = _template(dev)
    assert backend_change(preview(dev)) is None
    env_only = copy.deepcopy(template.inputs["metadata"])
    env_only["convex-backend-env"] += "RUST_LOG_EXTRA=1\n"
    assert backend_change(preview(dev, env_only)) is None


@pytest.mark.parametrize("replace", [True, False], ids=["template-replaced", "bare-vm-updated"])
def test_a_new_backend_digest_is_seen_in_the_preview(dev, replace):
    metadata = _template(dev).inputs["metadata"]
    change = backend_change(preview(dev, _with_backend(metadata, NEW_DIGEST), replace=replace))
    old = re.search(r"^BACKEND_IMAGE=(.*)$", metadata["convex-gcp-config"], re.M).group(1)
    assert change == Change(old=old, new=old.rsplit("@", 1)[0] + "@" + NEW_DIGEST)
    assert "@sha256:" in old  # the VM pulls by digest: the digest is what changes


def test_a_first_deploy_has_nothing_to_back_up(dev):
    template = _template(dev)
    data = {"steps": [{"op": "create", "urn": template.urn, "newState": {"inputs": dict(template.inputs)}}]}
    assert backend_change(data) is None


def test_export_then_backup_then_snapshot_named_in_the_summary(dev, tmp_path, capsys):
    data = preview(dev, _with_backend(_template(dev).inputs["metadata"], NEW_DIGEST))
    (tmp_path / "preview.json").write_text(json.dumps(data))
    (tmp_path / "outputs.json").write_text(json.dumps(OUTPUTS))
    gcloud = FakeGcloud()
    assert main([str(tmp_path / "preview.json"), "dev", "--outputs", str(tmp_path / "outputs.json")], run=gcloud) == 0
    kinds = [" ".join(c[1:4]) for c in gcloud.calls]
    assert kinds == ["compute ssh convex-dev-vm", "storage ls gs://convex-dev-exports-1a2b3c4d/convex-exports/**",
                     "sql backups create", "sql backups list", "compute snapshots create"], kinds
    ssh = gcloud.calls[0]
    assert "--tunnel-through-iap" in ssh and "--zone=asia-northeast1-a" in ssh
    assert "--command=sudo touch /mnt/disks/convex-data/exports/requested && sudo systemctl start convex-export.service" in ssh
    assert all("--project=example-convex-dev" in c for c in gcloud.calls)
    disk = _disk(dev).inputs["name"]
    snap = gcloud.calls[4]
    assert snap[4].startswith(f"{disk}-pre-upgrade-") and f"--source-disk={disk}" in snap and "--source-disk-zone=asia-northeast1-a" in snap
    out = capsys.readouterr().out
    assert "Convex export: `gs://b/convex-exports/2026/12/07/snapshot_" in out
    assert "Cloud SQL on-demand backup: convex-dev-pg-a1b2 backup 1765084800123" in out
    assert f"Data disk snapshot: `{snap[4]}`" in out and NEW_DIGEST in out


@pytest.mark.parametrize("fail", ["compute ssh", "sql backups create", "compute snapshots create"])
def test_any_copy_that_fails_stops_the_deploy(dev, tmp_path, capsys, fail):
    data = preview(dev, _with_backend(_template(dev).inputs["metadata"], NEW_DIGEST))
    (tmp_path / "preview.json").write_text(json.dumps(data))
    (tmp_path / "outputs.json").write_text(json.dumps(OUTPUTS))
    assert main([str(tmp_path / "preview.json"), "dev", "--outputs", str(tmp_path / "outputs.json")], run=FakeGcloud(fail)) == 1
    out = capsys.readouterr().out
    assert "REFUSED" in out and "PERMISSION_DENIED" in out and "CHECK:" in out


def test_an_export_older_than_the_request_is_not_taken_for_one(dev, tmp_path, capsys):
    data = preview(dev, _with_backend(_template(dev).inputs["metadata"], NEW_DIGEST))
    (tmp_path / "preview.json").write_text(json.dumps(data))
    (tmp_path / "outputs.json").write_text(json.dumps(OUTPUTS))
    gcloud = FakeGcloud(fresh_export=False)
    assert main([str(tmp_path / "preview.json"), "dev", "--outputs", str(tmp_path / "outputs.json")], run=gcloud) == 1
    assert "no export newer than the request" in capsys.readouterr().out
    assert not any(c[1:3] == ["sql", "backups"] for c in gcloud.calls)  # nothing after the export is attempted


def test_without_an_exports_bucket_the_upgrade_is_refused(dev):
    data = preview(dev, _with_backend(_template(dev).inputs["metadata"], NEW_DIGEST))
    with pytest.raises(PreUpgradeError, match="exports.enabled"):
        targets(data, {k: v for k, v in OUTPUTS.items() if k != "exports_bucket"}, "dev")


def test_the_deploy_workflow_backs_up_before_each_update():
    """In each deploying job, tools.pre_upgrade runs on the checked preview after the guard and before
    `pulumi up`, with the stack's outputs, and its summary goes to the run's summary."""
    from pathlib import Path

    import yaml

    workflow = yaml.safe_load((Path(__file__).resolve().parent.parent / ".github/workflows/deploy.yml").read_text())
    for job, stack in (("dev", "dev"), ("prod", "prod")):
        steps = workflow["jobs"][job]["steps"]
        names = [s.get("name", "") for s in steps]
        (backup,) = [i for i, s in enumerate(steps) if "tools.pre_upgrade" in s.get("run", "")]
        (up,) = [i for i, s in enumerate(steps) if "pulumi up" in s.get("run", "")]
        saved = [i for i, s in enumerate(steps) if "--save-plan" in s.get("run", "") or "download-artifact" in s.get("uses", "")]
        assert saved and max(saved) < backup < up, names  # the checked (dev) or approved (prod) preview, then up
        run = steps[backup]["run"]
        assert 'pulumi stack output --stack "$STACK" --json' in run
        assert steps[backup]["env"]["STACK"] == f"organization/convex-gcp/{stack}"
        assert "GITHUB_STEP_SUMMARY" in run and "preview.json" in run
