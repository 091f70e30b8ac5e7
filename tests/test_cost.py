"""tools/cost.py: the monthly estimate tools.plan prints, against a hand-computed case, and the parts
that follow the configuration (HA doubles, a MIG counts its target size, more than five rules)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tools import cost
from tools.plan import render_markdown

PRICES = cost.load_prices()


def test_dev_matches_the_hand_computed_estimate(dev_plan):
    # Pulumi.dev.yaml in asia-northeast1, from tools/prices.json by hand:
    #   e2-medium (1 vCPU + 4 GB): (0.028090 + 4 * 0.003765) * 730     = 31.50
    #   boot and data disks, 20 GB pd-balanced each: 20 * 0.13         =  2.60 + 2.60
    #   snapshots kept 14 days: 20 GB * (1 + 0.05 * 13) * 0.065       =  2.145 -> 2.15 (half up in binary: 2.1450000000000005)
    #   db-g1-small: 0.0452 * 730                                      = 33.00
    #   SQL SSD 10 GB: 10 * 0.221                                      =  2.21
    #   3 backups: 10 GB * (1 + 0.05 * 2) * 0.104                      =  1.14
    #   Cloud NAT for the VM (no external IP since the VM group): 0.0014 * 730 = 1.02, its IP 0.005 * 730 = 3.65
    #   2 secret versions (instance secret, admin key; IAM login: no password): 2 * 0.06 = 0.12
    estimate = cost.estimate(dev_plan, PRICES)
    by_item = {line.item: line.monthly for line in estimate.lines}
    assert by_item["e2-medium × 1"] == 31.50
    assert by_item["boot disk pd-balanced"] == 2.60 and by_item["data disk pd-balanced (convex-dev-data)"] == 2.60
    assert by_item["snapshots, daily, kept 14 days (multi-regional)"] == 2.15
    assert by_item["db-g1-small shared core"] == 33.00
    assert by_item["storage SSD"] == 2.21 and by_item["backups, 3 kept"] == 1.14
    assert by_item["Cloud NAT gateway"] == 1.02 and by_item["Cloud NAT IP address"] == 3.65
    assert "external IPv4 address on the VM" not in by_item and by_item["active secret versions"] == 0.12
    assert estimate.total == 79.99 and estimate.complete
    assert not estimate.confirmed  # Tokyo's figures are scaled, and the rendering says so


def test_plan_prints_the_monthly_figure(dev_plan, prod_plan):
    for plan in (dev_plan, prod_plan):
        text = render_markdown(plan)
        total = cost.estimate(plan, PRICES).total
        assert f"**Estimated monthly cost: ${total:,.2f}**" in text
        assert f"## Estimated monthly cost: ${total:,.2f}" in text and "| **total** |" in text
    assert cost.estimate(prod_plan, PRICES).total > 3 * cost.estimate(dev_plan, PRICES).total


def test_prod_counts_ha_and_the_front_door(prod_plan):
    estimate = cost.estimate(prod_plan, PRICES)
    region = PRICES["regions"][estimate.region]
    by_item = {line.item: line.monthly for line in estimate.lines}
    # db-custom-2-7680, REGIONAL: both vCPUs and memory billed twice.
    assert by_item["vCPU (HA: primary + standby)"] == round(2 * region["sql_vcpu_hour"] * 2 * 730, 2)
    assert by_item["memory (HA: primary + standby)"] == round(7.5 * region["sql_gb_hour"] * 2 * 730, 2)
    assert by_item["forwarding rules"] == round(2 * 0.025 * 730, 2)  # 443 and the port-80 redirect
    assert any("PITR" in u for u in estimate.usage)


def test_local_stack_has_no_estimate():
    @dataclass
    class Local:
        stack = "local"
        resources: list

    assert cost.estimate(Local([]), PRICES).lines == []


@dataclass
class R:
    type: str
    inputs: dict
    custom: bool = True


@dataclass
class P:
    stack: str
    resources: list


def _sql(**settings):
    base = {"tier": "db-custom-1-3840", "edition": "ENTERPRISE", "availabilityType": "ZONAL", "diskSize": 10, "diskType": "PD_SSD"}
    return R(cost.SQL, {"region": "us-central1", "settings": {**base, **settings}})


def test_a_group_of_one_from_a_template_is_priced_like_the_vm():
    template = R(cost.TEMPLATE, {"machineType": "e2-standard-2", "disks": [{"boot": True, "diskSizeGb": 20, "diskType": "pd-balanced"}],
                                 "networkInterfaces": [{}]})
    group = R(cost.MIGS[0], {"targetSize": 1})
    estimate = cost.estimate(P("x", [_sql(), template, group, R(cost.NAT, {})]), PRICES)
    by_item = {line.item: line.monthly for line in estimate.lines}
    assert by_item["e2-standard-2 × 1"] == round((2 * 0.021811 + 8 * 0.002923) * 730, 2)
    assert by_item["boot disk pd-balanced"] == 2.0
    assert by_item["Cloud NAT gateway"] == round(0.0014 * 730, 2)  # no external IP: it goes out through NAT
    assert by_item["Cloud NAT IP address"] == round(0.005 * 730, 2)


def test_more_than_five_rules_and_unknown_prices_are_said():
    rules = [R(cost.GLOBAL_RULE, {}) for _ in range(7)]
    estimate = cost.estimate(P("x", [_sql(tier="db-perf-optimized-N-2", edition="ENTERPRISE_PLUS"), *rules]), PRICES)
    by_item = {line.item: line.monthly for line in estimate.lines}
    assert by_item["forwarding rules"] == round((5 * 0.025 + 2 * 0.01) * 730, 2)
    assert by_item["db-perf-optimized-N-2 (ENTERPRISE_PLUS)"] is None and not estimate.complete
    assert "(incomplete)" in cost.render(estimate)[0]


def test_a_region_without_prices_says_so():
    estimate = cost.estimate(P("x", [R(cost.SQL, {"region": "europe-west1", "settings": {}})]), PRICES)
    assert estimate.lines == [] and "no prices for europe-west1" in "\n".join(cost.render(estimate))


def test_the_price_table_is_dated_and_sourced():
    assert PRICES["checked"] and PRICES["sources"]
    for name, region in PRICES["regions"].items():
        assert isinstance(region["confirmed"], bool), name
        assert region["confirmed"] or region.get("note"), f"{name}: an unconfirmed region says why"
    keys = {frozenset(region) - {"confirmed", "note"} for region in PRICES["regions"].values()}
    assert len(keys) == 1, "every region prices the same items"


def test_the_pull_request_comment_shows_the_change():
    dev = P("dev", [_sql()])
    bigger = P("dev", [_sql(tier="db-custom-2-7680")])
    text = cost.compare({"dev": cost.estimate(bigger, PRICES)}, {"dev": cost.estimate(dev, PRICES)})
    assert text.startswith(cost.COMMENT_MARKER)
    before, after = cost.estimate(dev, PRICES).total, cost.estimate(bigger, PRICES).total
    assert f"| dev | ${before:,.2f} | ${after:,.2f} | {after - before:+,.2f} |" in text
    assert "- Cloud SQL, vCPU:" in text
    assert "| dev | n/a |" in cost.compare({"dev": cost.estimate(dev, PRICES)}, {"dev": None})


@pytest.mark.parametrize("machine, shape", [("e2-medium", (1.0, 4.0)), ("e2-highmem-4", (4.0, 32.0)), ("e2-custom-4-8192", (4.0, 8.0)), ("n2-standard-4", None)])
def test_machine_shapes(machine, shape):
    assert cost.machine_shape(machine) == shape


def test_cost_cli_prints_every_gcp_stack(tmp_path):
    from tests import runner
    from tests.conftest import ROOT

    result = runner.run_python(["-m", "tools.cost"], cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "# Stack `dev`" in result.stdout and "# Stack `prod`" in result.stdout and "local" not in result.stdout


def test_the_pull_request_workflow_posts_the_change_without_running_the_prs_code():
    import yaml

    from tests.conftest import ROOT

    jobs = yaml.safe_load((ROOT / ".github/workflows/pull-request.yml").read_text())["jobs"]
    runs = " ".join(s.get("run", "") for s in jobs["test"]["steps"])
    assert "python -m tools.cost --base-root base > cost.md" in runs
    comment = jobs["cost-comment"]
    assert comment["needs"] == "test" and comment["permissions"] == {"pull-requests": "write"}
    assert not any("checkout" in str(s.get("uses", "")) for s in comment["steps"])  # only the artifact, never the PR's code
    assert cost.COMMENT_MARKER in " ".join(s.get("run", "") for s in comment["steps"])


CHEAPEST_DEV = {"convex-gcp:vm.machineType": "e2-small", "convex-gcp:vm.bootDiskSizeGb": "10", "convex-gcp:vm.dataDiskSizeGb": "10",
                "convex-gcp:database.tier": "db-f1-micro"}


def test_readme_and_docs_say_what_the_program_prints(dev_plan, prod_plan):
    import re

    from tests.conftest import ROOT, run_plan_with

    readme = (ROOT / "README.md").read_text()
    first_screen = readme.split("## What it builds", 1)[0]
    cheapest = run_plan_with("dev", CHEAPEST_DEV)
    assert not cheapest.error, cheapest.error
    for label, plan in (("dev", dev_plan), ("prod", prod_plan)):
        total = cost.estimate(plan, PRICES).total
        assert re.search(rf"^\| {label} \|.*\| about \${round(total)} \|$", first_screen, re.M), f"README's {label} figure is not ${round(total)}"
    cheap_total = cost.estimate(cheapest, PRICES).total
    assert f"about ${round(cheap_total)}." in first_screen
    doc = (ROOT / "docs/cost.md").read_text()
    assert f"About **${round(cheap_total)} a month**" in doc
    assert f"**${cost.estimate(dev_plan, PRICES).total:,.2f}** | **${cost.estimate(prod_plan, PRICES).total:,.2f}**" in doc
    for key, value in CHEAPEST_DEV.items():  # the documented commands are the ones measured
        assert f"pulumi config set --path '{key}' {value}" in doc
