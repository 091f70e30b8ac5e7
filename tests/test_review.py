"""tools/review.py: the reviewer's comment names each in-place change that restarts the database or the
VM, with its downtime; the changes are built from the inputs the program really declares."""

from __future__ import annotations

import copy
import json

import pytest

from tools.review import SQL, INSTANCE, UNKNOWN, downtime, main, render

FLAG = "gcp:sql/databaseInstance:DatabaseInstance"


def update(resource, change) -> dict:
    new = copy.deepcopy(resource.inputs)
    change(new)
    return {"op": "update", "urn": resource.urn, "oldState": {"inputs": resource.inputs}, "newState": {"inputs": new}}


def flags(inputs: dict, **values: str) -> None:
    listed = {f["name"]: f["value"] for f in inputs["settings"]["databaseFlags"]}
    listed.update(values)
    inputs["settings"]["databaseFlags"] = [{"name": k, "value": v} for k, v in sorted(listed.items())]


@pytest.fixture(scope="module")
def sql(request):
    return request.getfixturevalue("prod_plan").one(SQL)


@pytest.mark.parametrize("change,expected", [
    (lambda i: i["settings"].update(tier="db-custom-4-15360"), "tier (machine type): db-custom-2-7680 → db-custom-4-15360"),
    (lambda i: i["settings"].update(availabilityType="ZONAL"), "availability type: REGIONAL → ZONAL"),
    (lambda i: i["settings"].update(edition="ENTERPRISE_PLUS"), "edition: ENTERPRISE → ENTERPRISE_PLUS"),
    (lambda i: i["settings"]["locationPreference"].update(zone="asia-northeast1-b"), "zone: asia-northeast1-a → asia-northeast1-b"),
    (lambda i: flags(i, max_connections="400"), "flag max_connections: 200 → 400"),
    (lambda i: flags(i, shared_buffers="393216"), "flag shared_buffers: 327680 → 393216"),
    (lambda i: i.update(databaseVersion="POSTGRES_18"), "major version: POSTGRES_17 → POSTGRES_18"),
])
def test_each_restarting_sql_change_is_named_with_its_downtime(sql, change, expected):
    (cost,) = downtime({"steps": [update(sql, change)]})
    assert cost.change == expected and cost.urn == sql.urn
    assert "restart" in cost.effect or "unavailable" in cost.effect
    assert cost.source.startswith("https://cloud.google.com/sql/docs/postgres/")


def test_enterprise_plus_restarts_are_near_zero(sql):
    step = update(sql, lambda i: (i["settings"].update(edition="ENTERPRISE_PLUS"), flags(i, max_connections="400")))
    step["oldState"]["inputs"]["settings"]["edition"] = "ENTERPRISE_PLUS"
    (cost,) = downtime({"steps": [step]})
    assert "near-zero" in cost.effect and "under 1 s" in cost.effect


@pytest.mark.parametrize("change", [
    lambda i: flags(i, work_mem="16384"),                       # reloads, no restart
    lambda i: i["settings"]["backupConfiguration"].update(startTime="03:00"),
    lambda i: i["settings"]["maintenanceWindow"].update(hour=3),
    lambda i: i["settings"].update(userLabels={"app": "convex", "team": "x"}),
])
def test_changes_that_do_not_restart_are_not_named(sql, change):
    assert downtime({"steps": [update(sql, change)]}) == []


def test_a_flag_outside_the_catalogue_may_restart(sql):
    (cost,) = downtime({"steps": [update(sql, lambda i: flags(i, pg_stat_statements_track="all"))]})
    assert "may restart" in cost.effect and cost.source.endswith("/flags")


def test_an_unknown_value_is_shown_as_known_after_apply(sql):
    (cost,) = downtime({"steps": [update(sql, lambda i: i["settings"].update(tier=UNKNOWN))]})
    assert "(known after apply)" in cost.change


def test_vm_changes_that_stop_it_and_metadata_that_restarts_containers(dev_plan):
    vm = dev_plan.one("gcp:compute/instanceTemplate:InstanceTemplate")
    (stop,) = downtime({"steps": [update(vm, lambda i: i.update(machineType="e2-standard-4"))]})
    assert stop.change == "machine type: e2-medium → e2-standard-4" and "stops and starts" in stop.effect
    (cos,) = downtime({"steps": [update(vm, lambda i: i["disks"][0].update(sourceImage="projects/cos-cloud/global/images/cos-125-1"))]})
    assert cos.change.startswith("boot image: projects/cos-cloud/global/images/cos-") and "recreates the VM" in cos.effect
    (scopes,) = downtime({"steps": [update(vm, lambda i: i["serviceAccount"].update(scopes=["x"]))]})
    assert scopes.change.startswith("service account or scopes")
    key = next(iter(vm.inputs["metadata"]))
    (meta,) = downtime({"steps": [update(vm, lambda i: i["metadata"].update({key: "changed"}))]})
    assert "no VM restart" in meta.effect
    assert downtime({"steps": [update(vm, lambda i: i.update(labels={"a": "b"}))]}) == []


def test_the_comment_has_the_guard_verdict_downtime_and_steps(sql, tmp_path, capsys):
    preview = {"steps": [update(sql, lambda i: i["settings"].update(tier="db-custom-4-15360")),
                         {"op": "replace", "urn": sql.urn.replace("DatabaseInstance::", "DatabaseInstance::x"), "replaceReasons": ["name"]}],
               "diagnostics": [{"severity": "error", "message": "unable to replace resource\n"}]}
    path = tmp_path / "preview.json"
    path.write_text(json.dumps(preview))
    assert main([str(path), "prod"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("<!-- convex-gcp-review prod -->")
    assert "REFUSED" in out and "tier (machine type): db-custom-2-7680 → db-custom-4-15360" in out
    assert "| replace | `gcp:sql/databaseInstance:DatabaseInstance` |" in out and "name" in out
    assert "**Errors**" in out and "unable to replace resource" in out
    quiet = render({"steps": [{"op": "same", "urn": sql.urn}]}, "dev")
    assert "Nothing guarded" in quiet and "no change restarts" in quiet and "<details>" not in quiet
