"""The HTTPS front door (components/front_door.py): whole-program plans with and without
`convex-gcp:domain`, asserting on the recorded inputs."""

from __future__ import annotations

import ipaddress
import json

import pytest

from tests.conftest import run_plan, run_plan_with, stack_object
from tools.mocks import EXTERNAL_IP, FRONT_DOOR_IP

API, SITE, DASH = "api.convex.example.com", "site.convex.example.com", "dashboard.convex.example.com"
LB_RANGES = {"130.211.0.0/22", "35.191.0.0/16"}
IAP = "35.235.240.0/20"

CERT = "gcp:compute/managedSslCertificate:ManagedSslCertificate"
BACKEND = "gcp:compute/backendService:BackendService"
URLMAP = "gcp:compute/uRLMap:URLMap"
FIREWALL = "gcp:compute/firewall:Firewall"
RULE = "gcp:compute/globalForwardingRule:GlobalForwardingRule"
INSTANCE = "gcp:compute/instanceTemplate:InstanceTemplate"  # the VM's settings
GROUP = "gcp:compute/instanceGroupManager:InstanceGroupManager"
VM = "gcp:compute/perInstanceConfig:PerInstanceConfig"


def domain(**extra) -> dict:
    return {"apiHost": API, "siteHost": SITE, "dashboardHost": DASH, **extra}


def dev_with(domain_config: dict | None, **more: str) -> object:
    """dev with a domain; dev's apiSourceRanges (0.0.0.0/0) cannot apply without an external IP."""
    network = {**stack_object("dev", "network"), "apiSourceRanges": []}
    overrides = {"convex-gcp:network": json.dumps(network), **more}
    if domain_config is not None:
        overrides["convex-gcp:domain"] = json.dumps(domain_config)
    return run_plan_with("dev", overrides)


@pytest.fixture(scope="module")
def door():
    plan = dev_with(domain())
    assert not plan.error, plan.error
    return plan


def by_id(plan, typ: str) -> dict:
    """Mocked ids are `<name>-id`: map them back to the declared resource."""
    return {f"{r.inputs['name']}-id": r for r in plan.of_type(typ)}


def metadata_env(plan, key: str) -> dict[str, str]:
    text = plan.one(INSTANCE).inputs["metadata"][key]
    return dict(line.split("=", 1) for line in text.splitlines() if line)


# --------------------------------------------------------------------------- without a domain


def test_without_domain_there_is_no_front_door_and_no_external_ip(dev_plan):
    assert not dev_plan.of_type(CERT) and not dev_plan.of_type(BACKEND) and not dev_plan.of_type(RULE)
    # Only the VM's reserved internal address: IAP reaches it, NAT carries its pulls (issue 26).
    assert [a.inputs["addressType"] for a in dev_plan.of_type("gcp:compute/address:Address")] == ["INTERNAL"]
    assert not dev_plan.one(INSTANCE).inputs["networkInterfaces"][0].get("accessConfigs")
    # Reached through the IAP tunnel unless network.publicHttpWithoutTls (docs/delivery.md).
    assert dev_plan.outputs["convex_url"]["value"] == "http://localhost:3210"
    assert "front_door_ip" not in dev_plan.outputs
    # Google's ranges reach only the autohealing probe (vm/health/), no Convex port.
    google = [r for r in dev_plan.of_type(FIREWALL) if set(r.inputs["sourceRanges"]) & LB_RANGES]
    assert [r.inputs["allows"] for r in google] == [[{"protocol": "tcp", "ports": ["3290"]}]]


# --------------------------------------------------------------------------- with a domain


def test_certificates_cover_exactly_the_hosts_one_each(door):
    certs = door.of_type(CERT)
    domains = [c.inputs["managed"]["domains"] for c in certs]
    assert all(len(d) == 1 for d in domains)
    assert sorted(d[0] for d in domains) == sorted([API, SITE, DASH])
    proxy = door.one("gcp:compute/targetHttpsProxy:TargetHttpsProxy")
    assert sorted(proxy.inputs["sslCertificates"]) == sorted(f"{c.inputs['name']}-id" for c in certs)
    assert by_id(door, "gcp:compute/sSLPolicy:SSLPolicy")[proxy.inputs["sslPolicy"]].inputs["minTlsVersion"] == "TLS_1_2"


def test_without_a_dashboard_no_certificate_or_route_for_it():
    network = {**stack_object("dev", "network"), "apiSourceRanges": []}
    convex = {**stack_object("dev", "convex"), "dashboard": False}
    plan = run_plan_with(
        "dev",
        {"convex-gcp:network": json.dumps(network), "convex-gcp:convex": json.dumps(convex), "convex-gcp:domain": json.dumps({"apiHost": API, "siteHost": SITE})},
    )
    assert not plan.error, plan.error
    assert sorted(c.inputs["managed"]["domains"][0] for c in plan.of_type(CERT)) == [API, SITE]
    assert sorted(b.inputs["portName"] for b in plan.of_type(BACKEND)) == ["api", "site"]
    assert "dashboard_url" not in plan.outputs
    lb = next(r for r in plan.of_type(FIREWALL) if r.name == "network-allow-lb")
    assert lb.inputs["allows"][0]["ports"] == ["3210", "3211"]


def test_host_rules_route_each_host_to_its_port(door):
    urls = door.by_name("front-door-urls").inputs
    matchers = {m["name"]: m["defaultService"] for m in urls["pathMatchers"]}
    backends = by_id(door, BACKEND)
    group = door.one(GROUP)
    named = {p["name"]: int(p["port"]) for p in group.inputs["namedPorts"]}
    routed = {}
    for rule in urls["hostRules"]:
        (host,) = rule["hosts"]
        backend = backends[matchers[rule["pathMatcher"]]]
        assert backend.inputs["backends"][0]["group"].endswith(f"/zones/{group.inputs['zone']}/instanceGroups/{group.inputs['name']}")
        routed[host] = named[backend.inputs["portName"]]
    assert routed == {API: 3210, SITE: 3211, DASH: 6791}
    # Unknown hosts (the bare IP) get a redirect, never a backend.
    assert urls["defaultUrlRedirect"]["hostRedirect"] == API
    assert "defaultService" not in urls


def test_the_backend_is_the_vms_managed_group(door):
    group, vm = door.one(GROUP), door.one(VM)
    assert group.inputs["zone"] == vm.inputs["zone"] and vm.inputs["instanceGroupManager"] == group.inputs["name"]
    # The managed group follows its VM through recreations: no unmanaged group, no membership to re-add.
    assert not door.of_type("gcp:compute/instanceGroup:InstanceGroup")
    assert not door.of_type("gcp:compute/instanceGroupMembership:InstanceGroupMembership")
    assert all(group.urn in b.dependencies for b in door.of_type(BACKEND))


def test_websocket_timeout_is_long_and_configurable(door):
    timeouts = {b.inputs["portName"]: b.inputs["timeoutSec"] for b in door.of_type(BACKEND)}
    assert timeouts == {"api": 86400, "site": 900, "dashboard": 60}
    shorter = dev_with(domain(websocketTimeoutSec=3600))
    assert {b.inputs["portName"]: b.inputs["timeoutSec"] for b in shorter.of_type(BACKEND)}["api"] == 3600
    too_short = dev_with(domain(websocketTimeoutSec=30))
    assert "convex-gcp:domain.websocketTimeoutSec" in too_short.error


def test_health_checks_probe_version_on_the_backend(door):
    checks = by_id(door, "gcp:compute/healthCheck:HealthCheck")
    probes = {}
    # The group's autohealing check is its own (components/convex_vm.py); the backends probe /version.
    for backend in door.of_type(BACKEND):
        assert backend.inputs["loadBalancingScheme"] == "EXTERNAL_MANAGED" and backend.inputs["protocol"] == "HTTP"
        http = checks[backend.inputs["healthChecks"]].inputs["httpHealthCheck"]
        probes[backend.inputs["portName"]] = (int(http["port"]), http["requestPath"])
    assert probes == {"api": (3210, "/version"), "site": (3210, "/version"), "dashboard": (6791, "/")}


def test_http_redirects_to_https_on_the_same_ip(door):
    rules = {r.inputs["portRange"]: r.inputs for r in door.of_type(RULE)}
    assert set(rules) == {"80", "443"}
    address = door.by_name("front-door-ip").inputs
    assert {r["ipAddress"] for r in rules.values()} == {f"{address['name']}-id"}
    assert all(r["loadBalancingScheme"] == "EXTERNAL_MANAGED" for r in rules.values())
    http_proxy = by_id(door, "gcp:compute/targetHttpProxy:TargetHttpProxy")[rules["80"]["target"]]
    redirect = by_id(door, URLMAP)[http_proxy.inputs["urlMap"]].inputs
    assert redirect["defaultUrlRedirect"]["httpsRedirect"] is True
    https_proxy = by_id(door, "gcp:compute/targetHttpsProxy:TargetHttpsProxy")[rules["443"]["target"]]
    assert https_proxy.inputs["urlMap"] == "convex-dev-urls-id"


def test_firewall_admits_only_google_ranges_to_convex_ports(door):
    convex_ports = {"3210", "3211", "6791"}
    lb = [r for r in door.of_type(FIREWALL) if set(r.inputs["sourceRanges"]) == LB_RANGES]
    # The front door's ports, and autohealing's probe of the health endpoint (vm/health/).
    assert sorted((set(r.inputs["allows"][0]["ports"]) for r in lb), key=len) == [{"3290"}, convex_ports]
    for rule in door.of_type(FIREWALL):
        ports = {p for allow in rule.inputs["allows"] for p in allow.get("ports", [])}
        if ports & convex_ports:
            # Google's front ends, IAP TCP forwarding, or private sources only: nothing from the internet.
            for source in rule.inputs["sourceRanges"]:
                assert source in LB_RANGES or source == IAP or ipaddress.ip_network(source).is_private, (rule.name, source)


def test_vm_has_no_external_ip(door):
    assert [a.inputs["addressType"] for a in door.of_type("gcp:compute/address:Address")] == ["INTERNAL"]
    assert door.one(INSTANCE).inputs["networkInterfaces"][0].get("accessConfigs", []) == []
    # Image pulls still go out through Cloud NAT.
    assert door.of_type("gcp:compute/routerNat:RouterNat")


def test_origins_and_outputs_switch_to_https(door):
    backend = metadata_env(door, "convex-backend-env")
    assert backend["CONVEX_CLOUD_ORIGIN"] == f"https://{API}"
    assert backend["CONVEX_SITE_ORIGIN"] == f"https://{SITE}"
    assert metadata_env(door, "convex-dashboard-env")["NEXT_PUBLIC_DEPLOYMENT_URL"] == f"https://{API}"
    outputs = {key: value["value"] for key, value in door.outputs.items()}
    assert outputs["convex_url"] == f"https://{API}"
    assert outputs["convex_site_url"] == f"https://{SITE}"
    assert outputs["dashboard_url"] == f"https://{DASH}"
    assert outputs["front_door_ip"] == FRONT_DOOR_IP
    assert not any(EXTERNAL_IP in str(v) for v in outputs.values())


def test_dashboard_sits_behind_iap(door):
    iap = {b.inputs["portName"]: (b.inputs.get("iap") or {}).get("enabled", False) for b in door.of_type(BACKEND)}
    assert iap == {"api": False, "site": False, "dashboard": True}
    assert not door.of_type("gcp:iap/webBackendServiceIamMember:WebBackendServiceIamMember")
    assert door.by_name("iap").inputs["service"] == "iap.googleapis.com"
    members = dev_with(domain(dashboardMembers=["group:ops@example.com"]))
    (grant,) = members.of_type("gcp:iap/webBackendServiceIamMember:WebBackendServiceIamMember")
    assert grant.inputs == {"member": "group:ops@example.com", "role": "roles/iap.httpsResourceAccessor", "webBackendService": "convex-dev-dashboard"}


# --------------------------------------------------------------------------- DNS and Cloud Armor


def test_dns_records_only_with_a_managed_zone(door):
    assert not door.of_type("gcp:dns/recordSet:RecordSet")
    zoned = dev_with(domain(managedZone="convex-example-com"))
    # The A records; the CNAMEs of Certificate Manager's DNS authorization are test_domain_change.py's.
    records = {r.inputs["name"]: r.inputs for r in zoned.of_type("gcp:dns/recordSet:RecordSet") if r.inputs["type"] == "A"}
    assert set(records) == {f"{API}.", f"{SITE}.", f"{DASH}."}
    assert all(r["type"] == "A" and r["rrdatas"] == [FRONT_DOOR_IP] and r["managedZone"] == "convex-example-com" for r in records.values())


def test_cloud_armor_is_optional(door):
    assert not door.of_type("gcp:compute/securityPolicy:SecurityPolicy")
    assert all("securityPolicy" not in b.inputs for b in door.of_type(BACKEND))


def test_cloud_armor_rate_limit_and_allow_list():
    plan = dev_with(domain(armor={"allowRanges": ["203.0.113.0/24"], "rateLimit": {"count": 600, "intervalSec": 60, "banDurationSec": 600}}))
    assert not plan.error, plan.error
    policy = plan.one("gcp:compute/securityPolicy:SecurityPolicy")
    rules = sorted(policy.inputs["rules"], key=lambda r: r["priority"])
    limit, default = rules
    assert limit["action"] == "rate_based_ban"
    assert limit["match"]["config"]["srcIpRanges"] == ["203.0.113.0/24"]
    options = limit["rateLimitOptions"]
    assert options["rateLimitThreshold"] == {"count": 600, "intervalSec": 60}
    assert options["enforceOnKey"] == "IP" and options["exceedAction"] == "deny(429)" and options["banDurationSec"] == 600
    assert default["priority"] == 2147483647 and default["action"] == "deny(403)"
    assert {b.inputs["securityPolicy"] for b in plan.of_type(BACKEND)} == {f"{policy.inputs['name']}-id"}


def test_cloud_armor_rate_limit_alone_throttles_everyone():
    plan = dev_with(domain(armor={"rateLimit": {"count": 100}}))
    rules = sorted(plan.one("gcp:compute/securityPolicy:SecurityPolicy").inputs["rules"], key=lambda r: r["priority"])
    assert [(r["action"], r["match"]["config"]["srcIpRanges"]) for r in rules] == [("throttle", ["*"]), ("allow", ["*"])]


# --------------------------------------------------------------------------- configuration problems


def test_prod_without_domain_fails_clearly():
    plan = run_plan_with("prod", {"convex-gcp:domain": "null"})
    assert "convex-gcp:domain:" in plan.error
    assert "required when environment is prod" in plan.error
    assert "pulumi config set --path 'convex-gcp:domain.apiHost'" in plan.error
    assert not plan.resources


def test_prod_plan_has_the_front_door(prod_plan):
    assert not prod_plan.error, prod_plan.error
    assert prod_plan.outputs["convex_url"]["value"].startswith("https://")
    assert prod_plan.by_name("front-door-ip").protect


def test_dev_may_use_the_front_door_but_not_with_public_source_ranges():
    network = {**stack_object("dev", "network"), "apiSourceRanges": ["0.0.0.0/0"]}
    plan = run_plan("dev", **{"convex-gcp__domain": json.dumps(domain()), "convex-gcp__network": json.dumps(network)})
    assert "convex-gcp:network.apiSourceRanges" in plan.error
    assert "0.0.0.0/0 cannot reach the VM" in plan.error


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"siteHost": API}, "convex-gcp:domain.siteHost"),
        ({"apiHost": "*.convex.example.com"}, "convex-gcp:domain.apiHost"),
        ({"dashboardHost": None}, "convex-gcp:domain.dashboardHost"),
        ({"dashboardMembers": ["ops@example.com"]}, "convex-gcp:domain.dashboardMembers"),
        ({"armor": {"allowRanges": ["10.0.0.0/33"]}}, "convex-gcp:domain.armor.allowRanges"),
        ({"armor": {"rateLimit": {"count": 10, "intervalSec": 7}}}, "convex-gcp:domain.armor.rateLimit.intervalSec"),
    ],
)
def test_bad_domain_config_is_a_problem(change, path):
    config = {k: v for k, v in {**domain(), **change}.items() if v is not None}
    plan = dev_with(config)
    assert path in plan.error, plan.error
    assert "Traceback" not in plan.error


def test_unknown_domain_key_suggests_a_domain_key():
    plan = dev_with(domain(managedZon="z"))
    assert "did you mean 'managedZone'" in plan.error
