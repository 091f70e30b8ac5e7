"""tools/bump.py, offline: answers of the shapes the Compute API and the registries give (tests/fixtures/bump/,
shapes cited there and in the tool; the values are stand-ins, nothing here reaches a network), what is applied
and what is only reported, and the program reading the pins without any lookup."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pytest

from convex_gcp import images
from tests import runner
from tests.conftest import ROOT
from tools import bump
from tools.plan import IMAGE_LOOKUPS, plan_from_json

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "bump"
BACKEND = images.BACKEND_IMAGE.format(tag=images.CONVEX_VERSION)
DASHBOARD = images.DASHBOARD_IMAGE.format(tag=images.CONVEX_VERSION)
PROXY = images.PROXY_IMAGE.format(tag=images.PROXY_VERSION)
COLLECTOR = images.COLLECTOR_IMAGE
D1, D2, D3, D4 = ("sha256:" + c * 64 for c in "1234")


def family_answer(**changes) -> dict:
    answer = json.loads((FIXTURES / "getFromFamily-cos-125-lts.json").read_text())
    answer.update(changes)
    return answer


def pins(**digests) -> dict:
    data = copy.deepcopy(images.load_pins(images.PINS_FILE))
    for ref, digest in digests.items():
        data["images"][ref]["digest"] = digest
    return data


class Replay:
    """Answers each request with the next recorded exchange for the reference, checking it is the request made."""

    def __init__(self, exchanges: list[dict]):
        self.exchanges, self.seen = list(exchanges), []

    def __call__(self, method: str, url: str, headers: dict[str, str]):
        expected = self.exchanges.pop(0)
        self.seen.append((method, url, headers.get("Authorization")))
        assert (method, url) == (expected["method"], expected["url"])
        assert headers.get("Authorization") == (expected["auth"] or None)
        return expected["status"], expected["headers"], expected["body"].encode()


# --------------------------------------------------------------------------- the boot image


def test_a_newer_build_of_the_pinned_family_is_proposed():
    pinned = images.load_pins(images.PINS_FILE)["cos"]
    image, why = bump.newest_cos(family_answer(), pinned)
    assert image == "cos-125-19216-764-12" and pinned["image"] in why


@pytest.mark.parametrize("changes, reason", [
    ({"name": images.COS_IMAGE}, "is the newest build"),
    ({"name": "cos-125-19216-600-1"}, "is the newest build"),  # older than the pin: never a downgrade
    ({"status": "PENDING"}, "not READY"),
    ({"deprecated": {"state": "DEPRECATED", "replacement": "x"}}, "DEPRECATED"),
    ({"family": "cos-stable"}, "not the pinned"),
    ({"name": "cos-129-19506-505-8"}, "a new milestone is a deliberate change"),
    ({"architecture": "ARM64"}, "x86-64"),
])
def test_nothing_else_moves_the_boot_image(changes, reason):
    image, why = bump.newest_cos(family_answer(**changes), images.load_pins(images.PINS_FILE)["cos"])
    assert image is None and reason in why


def test_build_numbers_compare_as_numbers():
    assert bump.cos_build("cos-125-19216-1000-1") > bump.cos_build("cos-125-19216-999-9")
    with pytest.raises(ValueError):
        bump.cos_build("cos-stable")


# --------------------------------------------------------------------------- registries


@pytest.mark.parametrize("reference, digest", [(BACKEND, D1), (PROXY, D3)])
def test_digest_through_the_anonymous_token_challenge(reference, digest):
    replay = Replay(json.loads((FIXTURES / "registry-exchanges.json").read_text())[reference])
    assert bump.registry_digest(reference, fetch=replay) == digest
    assert not replay.exchanges and [m for m, _, _ in replay.seen] == ["HEAD", "GET", "HEAD"]


def test_the_manifest_request_asks_for_the_multi_arch_index_first():
    seen = {}

    def fetch(method, url, headers):
        seen.update(headers)
        return 200, {"Docker-Content-Digest": D2}, b""

    assert bump.registry_digest(DASHBOARD, fetch=fetch) == D2
    assert seen["Accept"].startswith("application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json")


def test_registry_failures_are_errors_not_guesses():
    with pytest.raises(ValueError, match="404"):
        bump.registry_digest(PROXY, fetch=lambda m, u, h: (404, {}, b""))
    with pytest.raises(ValueError, match="no sha256 digest"):
        bump.registry_digest(PROXY, fetch=lambda m, u, h: (200, {"Docker-Content-Digest": "md5:x"}, b""))
    with pytest.raises(ValueError, match="Bearer"):
        bump.parse_challenge('Basic realm="x"')
    assert bump.token_from(b'{"access_token": "t"}') == "t"


# --------------------------------------------------------------------------- what is applied, what is reported


def test_first_digests_and_a_new_build_are_applied_a_moved_tag_only_reported():
    current = pins(**{BACKEND: D1, DASHBOARD: None, PROXY: D3})
    changes = bump.changes_for(current, family_answer(), {BACKEND: "sha256:" + "9" * 64, DASHBOARD: D2, PROXY: D3, COLLECTOR: D4})
    kinds = {c.subject: c.kind for c in changes}
    assert kinds == {"cos-cloud/cos-125-lts": "cos", BACKEND: "moved", DASHBOARD: "pinned", PROXY: "same", COLLECTOR: "pinned"}
    new = bump.apply(current, changes, "2026-12-07")
    assert new["cos"]["image"] == "cos-125-19216-764-12" and new["cos"]["checked"] == "2026-12-07"
    assert new["images"][DASHBOARD]["digest"] == D2
    # The moved tag keeps the reviewed digest; what was seen is recorded beside it for the reviewer.
    assert new["images"][BACKEND]["digest"] == D1 and new["images"][BACKEND]["moved"] == {"digest": "sha256:" + "9" * 64, "seen": "2026-12-07"}
    report = bump.render(changes)
    assert "no longer matches its recorded digest" in report and "**reported, NOT applied**" in report
    assert "1 moved tag(s) reported" in report and "3 applied" in report


def test_a_failed_lookup_changes_nothing_for_that_tag():
    current = pins(**{BACKEND: D1})
    changes = bump.changes_for(current, None, {BACKEND: ValueError("503"), DASHBOARD: D2, PROXY: D3, COLLECTOR: D4})
    assert [c.kind for c in changes if c.subject == BACKEND] == ["error"]
    assert bump.apply(current, changes, "2026-12-07")["images"][BACKEND]["digest"] == D1


def test_the_cli_writes_the_proposal_and_its_report(tmp_path, monkeypatch):
    path, body, answer = tmp_path / "pins.json", tmp_path / "body.md", tmp_path / "cos.json"
    path.write_text(json.dumps(pins(), indent=2) + "\n")
    answer.write_text(json.dumps(family_answer()))
    monkeypatch.setattr(bump, "registry_digest", lambda ref, fetch=None: {BACKEND: D1, DASHBOARD: D2, PROXY: D3, COLLECTOR: D4}[ref])
    assert bump.main(["--pins", str(path), "--cos-json", str(answer), "--write", "--body", str(body)]) == 0
    written = json.loads(path.read_text())
    assert written["cos"]["image"] == "cos-125-19216-764-12"
    assert {ref: e["digest"] for ref, e in written["images"].items()} == {BACKEND: D1, DASHBOARD: D2, PROXY: D3, COLLECTOR: D4}
    assert "| `cos-cloud/cos-125-lts` |" in body.read_text()


# --------------------------------------------------------------------------- the committed pins and the program


def test_the_committed_pins_are_well_formed():
    data = images.load_pins(images.PINS_FILE)
    cos = data["cos"]
    assert bump.cos_build(cos["image"])[0] == int(re.fullmatch(r"cos-(\d+)-lts", cos["family"]).group(1))
    assert cos["checked"] and cos["source"]
    # Every tag the program runs by default is pinned here, once.
    assert {BACKEND, DASHBOARD, PROXY, COLLECTOR} <= set(data["images"])
    for ref, entry in data["images"].items():
        bump.split_reference(ref)
        assert entry["digest"] is None or re.fullmatch(r"sha256:[0-9a-f]{64}", entry["digest"]), ref
        assert entry["source"]
    assert images.PINS_FILE.read_text() == json.dumps(data, indent=2) + "\n"  # as tools.bump --write writes it


def plan_with_pins(tmp_path, stack: str, data: dict):
    path = tmp_path / "pins.json"
    path.write_text(json.dumps(data))
    result = runner.run_python(["-m", "tools.plan", stack, "--json"], cwd=ROOT, timeout=300,
                               env={**os.environ, "CONVEX_GCP_PINS": str(path)})
    assert result.returncode == 0, result.stderr[-3000:]
    return plan_from_json(result.stdout)


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_with_every_digest_pinned_a_preview_looks_nothing_up(tmp_path, stack):
    plan = plan_with_pins(tmp_path, stack, pins(**{BACKEND: D1, DASHBOARD: D2, PROXY: D3, COLLECTOR: D4}))
    assert [i for i in plan.invokes if i["token"] in IMAGE_LOOKUPS] == []
    assert not plan.of_type("pulumi:providers:docker")
    template = plan.one("gcp:compute/instanceTemplate:InstanceTemplate")
    config = dict(line.split("=", 1) for line in template.inputs["metadata"]["convex-gcp-config"].splitlines() if "=" in line)
    assert (config["BACKEND_IMAGE"], config["DASHBOARD_IMAGE"], config["PROXY_IMAGE"]) == (
        f"ghcr.io/get-convex/convex-backend@{D1}", f"ghcr.io/get-convex/convex-dashboard@{D2}", f"gcr.io/cloud-sql-connectors/cloud-sql-proxy@{D3}")
    assert template.inputs["disks"][0]["sourceImage"] == f"projects/cos-cloud/global/images/{images.COS_IMAGE}"
    assert not any("pins.json has no digest" in w for w in plan.warnings)


def test_an_unpinned_tag_is_looked_up_with_a_warning(tmp_path):
    plan = plan_with_pins(tmp_path, "dev", pins(**{BACKEND: D1, DASHBOARD: D2, PROXY: None, COLLECTOR: D4}))
    looked_up = [i["args"]["name"] for i in plan.invokes if i["token"] in IMAGE_LOOKUPS]
    assert looked_up == [PROXY]
    assert any("pins.json has no digest for " + PROXY in w for w in plan.warnings)


def test_the_workflow_proposes_weekly_and_on_demand_and_commits_only_the_pins():
    import yaml

    flow = yaml.safe_load((ROOT / ".github" / "workflows" / "bump.yml").read_text())
    triggers = flow[True]  # YAML 1.1 reads the key `on` as a boolean
    assert set(triggers) == {"schedule", "workflow_dispatch"} and len(triggers["schedule"]) == 1
    assert re.fullmatch(r"\d+ \d+ \* \* \d", triggers["schedule"][0]["cron"])  # one day a week
    (job,) = flow["jobs"].values()
    assert 0 < job["timeout-minutes"] <= 30
    runs = "\n".join(step.get("run", "") for step in job["steps"])
    assert ".venv/bin/python -m tools.bump --write --body bump-report.md" in runs
    # A pull request only when pins.json changed, carrying the report, the diff and both stacks' plans.
    assert "git diff --quiet -- convex_gcp/pins.json" in runs and "git add convex_gcp/pins.json" in runs
    assert "git add -A" not in runs and "git commit -a" not in runs
    assert 'for stack in dev prod' in runs and "-m tools.plan" in runs and "gh pr create" in runs and "--body-file pr-body.md" in runs
    assert job["permissions"] == {"contents": "write", "pull-requests": "write", "id-token": "write"}
