"""Dev without a domain: Convex (API, site, dashboard) is reached through an IAP TCP tunnel; opening
3210/3211 to the internet over plain HTTP takes `network.publicHttpWithoutTls: true` and draws a
warning at preview. The policy pack allows those two ports to the world in dev only."""

from __future__ import annotations

import json

import pytest

from convex_gcp.settings import ConfigError, load_settings, settings_warnings
from policy import rules
from tests.conftest import ROOT, run_plan_with
from tools.mocks import EXTERNAL_IP
from tools.plan import stack_config

FIREWALL = "gcp:compute/firewall:Firewall"


def dev(**network) -> dict[str, str]:
    config = stack_config("dev")
    config["convex-gcp:network"] = json.dumps({**json.loads(config["convex-gcp:network"]), **network})
    return config


def test_the_dev_stack_opens_nothing_to_the_internet_and_tunnels_through_iap(dev_plan):
    rules_ = {r.inputs["name"]: r.inputs for r in dev_plan.of_type(FIREWALL)}
    assert set(rules_) == {"convex-dev-allow-iap", "convex-dev-allow-autoheal"}
    # Google's health checkers reach only the autohealing probe, never Convex (vm/health/).
    assert rules_["convex-dev-allow-autoheal"]["allows"] == [{"ports": ["3290"], "protocol": "tcp"}]
    assert set(rules_["convex-dev-allow-autoheal"]["sourceRanges"]) == {"130.211.0.0/22", "35.191.0.0/16"}
    iap = rules_["convex-dev-allow-iap"]
    assert iap["sourceRanges"] == ["35.235.240.0/20"]
    assert iap["allows"] == [{"ports": ["22", "3210", "3211", "6791"], "protocol": "tcp"}]
    # The origins Convex hands out and the dashboard calls are the tunnel's local ends.
    assert dev_plan.outputs["convex_url"]["value"] == "http://localhost:3210"
    assert dev_plan.outputs["convex_site_url"]["value"] == "http://localhost:3211"
    assert dev_plan.outputs["dashboard_url"]["value"] == "http://localhost:6791"
    assert not settings_warnings(load_settings(stack_config("dev"), "dev"))


@pytest.mark.parametrize("key", ["apiSourceRanges", "dashboardSourceRanges"])
def test_public_ranges_without_the_setting_stop_before_anything_is_created(key):
    with pytest.raises(ConfigError) as error:
        load_settings(dev(**{key: ["10.0.0.0/8", "8.8.4.4/32"]}), "dev")
    (problem,) = [p for p in error.value.problems if p.path == f"convex-gcp:network.{key}"]
    assert "8.8.4.4/32 would reach Convex over plain HTTP" in problem.reason
    assert "publicHttpWithoutTls" in problem.allowed and "IAP tunnel" in problem.allowed
    # The fix keeps the private range.
    assert "10.0.0.0/8" in problem.fix and "8.8.4.4" not in problem.fix
    # Private ranges (VPN, peered networks) need no opt-in.
    assert load_settings(dev(**{key: ["10.0.0.0/8"]}), "dev")


def test_the_opt_in_opens_the_api_warns_and_keeps_the_vm_ip_as_origin():
    settings = load_settings(dev(apiSourceRanges=["0.0.0.0/0"], publicHttpWithoutTls=True), "dev")
    (warning,) = settings_warnings(settings)
    assert "publicHttpWithoutTls is true" in warning and "0.0.0.0/0" in warning and "unencrypted" in warning
    plan = run_plan_with("dev", {"convex-gcp:network": dev(apiSourceRanges=["0.0.0.0/0"], publicHttpWithoutTls=True)["convex-gcp:network"]})
    assert not plan.error, plan.error
    assert plan.outputs["convex_url"]["value"] == f"http://{EXTERNAL_IP}:3210"
    api = next(r for r in plan.of_type(FIREWALL) if r.inputs["name"] == "convex-dev-allow-api")
    assert api.inputs["sourceRanges"] == ["0.0.0.0/0"]
    # The pack allows exactly these ports to the world in dev (policy/config/dev.json), never in prod.
    for stack, passes in (("dev", True), ("prod", False)):
        config = json.loads((ROOT / "policy" / "config" / f"{stack}.json").read_text())["no-world-open-ports"]
        resource = rules.Resource(type=FIREWALL, name="api", props=api.inputs, config=config)
        assert (rules.no_world_open_ports(resource) == []) is passes, stack


def test_monitoring_without_a_reachable_url_warns():
    config = dev()
    config["convex-gcp:monitoring"] = json.dumps({"enabled": True, "notificationEmails": ["a@example.com"]})
    assert any("uptime check cannot reach" in w for w in settings_warnings(load_settings(config, "dev")))
