"""Region, zone and machine type: the table offline, the project when it answers, the same
kind of problem either way."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from convex_gcp import gce_catalog
from convex_gcp.placement import PulumiLookup
from convex_gcp.settings import ConfigError, load_settings
from tests.conftest import run_plan_with, stack_object
from tests.test_settings import config


class FakeProject:
    """What a project answers through get_zones / get_machine_types; None: it cannot be asked."""

    def __init__(self, zones=None, machine_types=None):
        self._zones, self._types, self.asked = zones, machine_types, []

    def zones(self, project, region):
        self.asked.append(("zones", project, region))
        return None if self._zones is None else self._zones.get(region, [])

    def machine_types(self, project, zone):
        self.asked.append(("machine_types", project, zone))
        return None if self._types is None else self._types.get(zone)


def problems_with(lookup, **changes):
    with pytest.raises(ConfigError) as caught:
        load_settings(config(**changes), "dev", lookup=lookup)
    return caught.value.problems


def test_table_has_date_source_and_irregular_zone_letters():
    assert gce_catalog.CHECKED and "regions-zones" in gce_catalog.SOURCE
    assert gce_catalog.zones_of("europe-west1") == ["europe-west1-b", "europe-west1-c", "europe-west1-d"]
    assert "us-central1-f" in gce_catalog.zones_of("us-central1")


def test_default_zone_is_the_regions_first_zone():
    # us-east1 has no -a zone.
    assert load_settings(config(**{"gcp:region": "us-east1"}, vm={"zone": None}), "dev").zone == "us-east1-b"


@pytest.mark.parametrize(
    "changes, path, reason",
    [
        ({"gcp:region": "asia-northeast9"}, "gcp:region", "'asia-northeast9' is not a region (table of"),
        ({"vm": {"zone": "asia-northeast1-z"}}, "convex-gcp:vm.zone", "'asia-northeast1-z' is not a zone of region 'asia-northeast1' (table of"),
        ({"vm": {"zone": "us-central1-a"}}, "convex-gcp:vm.zone", "'us-central1-a' is outside region 'asia-northeast1'"),
        ({"vm": {"machineType": "e2-mediun"}}, "convex-gcp:vm.machineType", "'e2-mediun' is not a Compute Engine machine type (table of"),
        ({"vm": {"machineType": "n2-standard-3"}}, "convex-gcp:vm.machineType", "n2-standard comes with 2, 4, 8"),
        ({"vm": {"machineType": "t2a-standard-4"}}, "convex-gcp:vm.machineType", "Arm machine type"),
        ({"vm": {"machineType": "e2-custom-3-4096"}}, "convex-gcp:vm.machineType", "custom types take 1 or an even number"),
        ({"vm": {"machineType": "n2-custom-4-5000"}}, "convex-gcp:vm.machineType", "not a multiple of 256 MB"),
    ],
)
def test_offline_table_rejects_values_that_only_look_right(changes, path, reason):
    [problem] = problems_with(None, **changes)
    assert problem.path == path and reason in problem.reason, problem.render()


@pytest.mark.parametrize("machine_type", ["e2-medium", "e2-standard-4", "n2d-highmem-8", "c3-standard-22", "e2-custom-4-8192", "custom-2-7680", "n2-custom-4-8192-ext"])
def test_offline_table_accepts_real_types(machine_type):
    assert load_settings(config(vm={"machineType": machine_type}), "dev").vm.machine_type == machine_type


def test_the_project_answer_wins_over_the_table():
    zones = {"asia-northeast1": ["asia-northeast1-a", "asia-northeast1-b"]}
    project = FakeProject(zones, {"asia-northeast1-a": ["e2-medium", "e2-standard-4"]})
    # The table knows zone c and c3 types; this project has neither.
    [problem] = problems_with(project, vm={"zone": "asia-northeast1-c"})
    assert problem.reason.startswith("'asia-northeast1-c' is not a zone of region 'asia-northeast1' (project example-convex-dev)")
    assert problem.allowed == "asia-northeast1-a, asia-northeast1-b"
    [problem] = problems_with(project, vm={"zone": "asia-northeast1-a", "machineType": "c3-standard-4"})
    assert problem.path == "convex-gcp:vm.machineType"
    assert "'c3-standard-4' is not offered in zone asia-northeast1-a (project example-convex-dev)" in problem.reason
    assert ("machine_types", "example-convex-dev", "asia-northeast1-a") in project.asked


def test_a_region_newer_than_the_table_passes_when_the_project_knows_it():
    project = FakeProject({"asia-southeast9": ["asia-southeast9-a"]}, {"asia-southeast9-a": ["e2-medium"]})
    settings = load_settings(config(**{"gcp:region": "asia-southeast9"}, vm={"zone": "asia-southeast9-a"}), "dev", lookup=project)
    assert settings.zone == "asia-southeast9-a"
    # Without the project, the table rejects it: same key, same kind of problem.
    [offline] = problems_with(None, **{"gcp:region": "asia-southeast9"}, vm={"zone": "asia-southeast9-a"})
    [live] = problems_with(FakeProject({}, {}), **{"gcp:region": "asia-southeast9"}, vm={"zone": "asia-southeast9-a"})
    assert offline.path == live.path == "gcp:region"
    assert "(table of" in offline.reason and "(project example-convex-dev)" in live.reason
    assert offline.fix == live.fix


def test_custom_types_are_not_asked_of_the_project():
    # machineTypes.list never lists custom types; the table's shape rules decide.
    project = FakeProject({"asia-northeast1": gce_catalog.zones_of("asia-northeast1")}, {"asia-northeast1-a": ["e2-medium"]})
    load_settings(config(vm={"zone": "asia-northeast1-a", "machineType": "e2-custom-4-8192"}), "dev", lookup=project)
    assert not [a for a in project.asked if a[0] == "machine_types"]


def test_a_project_that_cannot_answer_falls_back_to_the_table():
    project = FakeProject(None, None)
    [problem] = problems_with(project, vm={"machineType": "e2-mediun"})
    assert "(table of" in problem.reason


def test_pulumi_lookup_failure_means_table(monkeypatch):
    """No credentials or the compute API still disabled: the invoke raises; nothing is fatal."""
    import pulumi
    import pulumi_gcp

    calls = []

    def no_credentials(**kwargs):
        calls.append(kwargs)
        raise Exception("invoke of gcp:compute/getZones:getZones failed: could not find default credentials")

    # A stand-in for the package, not the package: importing pulumi_gcp.compute costs ~1 s.
    monkeypatch.setattr(pulumi_gcp, "compute", SimpleNamespace(get_zones=no_credentials))
    monkeypatch.setattr(pulumi.log, "info", lambda *a, **k: None)
    lookup = PulumiLookup()
    assert lookup.zones("p", "asia-northeast1") is None
    assert "could not find default credentials" in lookup.failure
    assert lookup.machine_types("p", "asia-northeast1-a") is None  # not asked again after a failure
    assert len(calls) == 1


def test_under_mocks_the_program_asks_the_project():
    """tools/mocks.py answers getZones/getMachineTypes like the provider: the plan's error names the project."""
    vm = {**stack_object("dev", "vm"), "machineType": "e2-mediun"}
    plan = run_plan_with("dev", {"convex-gcp:vm": json.dumps(vm), "gcp:region": "asia-northeast9"})
    assert "gcp:region: 'asia-northeast9' is not a region (project example-convex-dev)" in plan.error
    plan = run_plan_with("dev", {"convex-gcp:vm": json.dumps(vm)})
    assert "'e2-mediun' is not offered in zone asia-northeast1-a (project example-convex-dev) (did you mean 'e2-medium'?)" in plan.error
    assert not [r for r in plan.resources if r.custom]


def test_a_series_newer_than_the_table_is_left_to_google():
    # Offline (fresh project, compute API not yet enabled) a stale table must not block a real
    # series; a wrong size of a series the table knows is still caught.
    assert gce_catalog.machine_type_problem("c4d-standard-8") is None
    assert gce_catalog.machine_type_problem("e2-standard-3") is not None
    assert gce_catalog.machine_type_problem("e2-mediun") is not None
