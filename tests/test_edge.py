"""The edge (issue 26, part 5): Cloud Armor on prod's API and site backends with a per-client throttle,
the admin-route ranges and the user's rules; /metrics unreachable through the load balancer on every host;
HSTS on HTTPS answers; port 80 answers only the redirect. Resources compared whole, hostile variants tried."""

from __future__ import annotations

import json
import re

import pytest

from components.front_door import ADMIN_PATH_EXPRESSION, HSTS_HEADER
from tests.conftest import run_plan_with, stack_object

POLICY = "gcp:compute/securityPolicy:SecurityPolicy"
BACKEND = "gcp:compute/backendService:BackendService"
URLMAP = "gcp:compute/uRLMap:URLMap"
RULE = "gcp:compute/globalForwardingRule:GlobalForwardingRule"
DEFAULT = {"action": "allow", "description": "Default: allow", "priority": 2147483647,
           "match": {"config": {"srcIpRanges": ["*"]}, "versionedExpr": "SRC_IPS_V1"}}
THROTTLE = {"action": "throttle", "description": "Rate limit per client IP", "priority": 1000,
            "match": {"config": {"srcIpRanges": ["*"]}, "versionedExpr": "SRC_IPS_V1"},
            "rateLimitOptions": {"conformAction": "allow", "enforceOnKey": "IP", "exceedAction": "deny(429)",
                                 "rateLimitThreshold": {"count": 1200, "intervalSec": 60}}}


def prod_with(**armor) -> object:
    domain = {**stack_object("prod", "domain"), "armor": armor} if armor else stack_object("prod", "domain")
    from tools.offline_values import replace_placeholders

    return run_plan_with("prod", replace_placeholders({"convex-gcp:domain": json.dumps(domain)}))


def policies(plan) -> dict[str, dict]:
    return {p.inputs["name"]: p.inputs for p in plan.of_type(POLICY)}


def by_role(plan) -> dict[str, dict]:
    return {b.inputs["portName"]: b.inputs for b in plan.of_type(BACKEND)}


# --------------------------------------------------------------------------- Cloud Armor


def test_prod_has_armor_with_a_per_client_throttle_on_every_backend(prod_plan):
    (policy,) = prod_plan.of_type(POLICY)
    assert policy.inputs == {"name": "convex-prod-armor", "type": "CLOUD_ARMOR",
                             "description": "Convex front door: your rules, allow-list and per-IP rate limit",
                             "rules": [THROTTLE, DEFAULT]}
    assert {role: b["securityPolicy"] for role, b in by_role(prod_plan).items()} == {
        "api": "convex-prod-armor-id", "site": "convex-prod-armor-id", "dashboard": "convex-prod-armor-id"}


def test_prod_refuses_armor_off_and_keeps_a_throttle_without_rate_limit():
    off = prod_with(enabled=False)
    assert "convex-gcp:domain.armor.enabled" in off.error and "required when environment is prod" in off.error
    only_ranges = prod_with(allowRanges=["203.0.113.0/24"])
    (policy,) = only_ranges.of_type(POLICY)
    throttle = policy.inputs["rules"][0]
    assert throttle["action"] == "throttle" and throttle["match"]["config"]["srcIpRanges"] == ["203.0.113.0/24"]
    assert policy.inputs["rules"][-1]["action"] == "deny(403)"


def test_dev_may_switch_armor_off(request):
    from tests.test_front_door import dev_with, domain

    plan = dev_with(domain(armor={"enabled": False, "rateLimit": {"count": 5}}))
    assert not plan.error and not plan.of_type(POLICY)


def test_admin_ranges_guard_the_api_host_only_with_the_users_rules_first():
    plan = prod_with(adminRanges=["198.51.100.0/24", "203.0.113.0/24", "192.0.2.0/28", "100.64.0.0/10"],
                     rules=[{"priority": 10, "action": "deny(403)", "expression": "evaluatePreconfiguredWaf('sqli-v33-stable')",
                             "description": "SQLi"},
                            {"priority": 5, "action": "deny(403)", "srcIpRanges": ["192.0.2.128/25"], "preview": True}])
    assert not plan.error, plan.error
    found = policies(plan)
    user = [{"action": "deny(403)", "description": "User rule 5", "priority": 5, "preview": True,
             "match": {"config": {"srcIpRanges": ["192.0.2.128/25"]}, "versionedExpr": "SRC_IPS_V1"}},
            {"action": "deny(403)", "description": "SQLi", "priority": 10, "preview": False,
             "match": {"expr": {"expression": "evaluatePreconfiguredWaf('sqli-v33-stable')"}}}]
    admin = [
        {"action": "allow", "description": "Admin routes from the admin ranges", "priority": 900,
         "match": {"expr": {"expression": f"{ADMIN_PATH_EXPRESSION} && (inIpRange(origin.ip, '198.51.100.0/24') || "
                                          "inIpRange(origin.ip, '203.0.113.0/24') || inIpRange(origin.ip, '192.0.2.0/28'))"}}},
        {"action": "allow", "description": "Admin routes from the admin ranges", "priority": 901,
         "match": {"expr": {"expression": f"{ADMIN_PATH_EXPRESSION} && (inIpRange(origin.ip, '100.64.0.0/10'))"}}},
        {"action": "deny(403)", "description": "Admin routes from anywhere else", "priority": 902,
         "match": {"expr": {"expression": ADMIN_PATH_EXPRESSION}}},
    ]
    assert found["convex-prod-armor-api"]["rules"] == user + admin + [THROTTLE, DEFAULT]
    assert found["convex-prod-armor"]["rules"] == user + [THROTTLE, DEFAULT]
    assert {role: b["securityPolicy"] for role, b in by_role(plan).items()} == {
        "api": "convex-prod-armor-api-id", "site": "convex-prod-armor-id", "dashboard": "convex-prod-armor-id"}
    # Cloud Armor allows five subexpressions per expression (rules-language-reference).
    for rule in found["convex-prod-armor-api"]["rules"]:
        expression = rule["match"].get("expr", {}).get("expression", "")
        assert len(re.split(r"&&|\|\|", expression)) <= 5, expression


def _cel_regex() -> re.Pattern:
    literal = re.search(r"matches\('(.*)'\)", ADMIN_PATH_EXPRESSION).group(1)
    return re.compile(literal.replace("\\\\", "\\"))  # a CEL string literal's escapes


def is_admin(path: str) -> bool:
    return path.startswith("/api/") and not _cel_regex().search(path)


# Client routes at the pinned commit (crates/local_backend/src/router.rs, public_api.rs).
CLIENT = ["/api/sync", "/api/1.25.4/sync", "/api/query", "/api/query_ts", "/api/query_at_ts", "/api/query_batch",
          "/api/mutation", "/api/action", "/api/function", "/api/run/messages:list", "/api/run/dir/file.js:send",
          "/api/storage/upload", "/api/storage/kg2a0e5f", "/api/actions/query", "/api/public_openapi.json"]
# Admin routes there: the CLI's, the dashboard's, the platform API; and hostile spellings.
ADMIN = ["/api/push_config", "/api/prepare_schema", "/api/deploy2/start_push", "/api/run_test_function",
         "/api/update_environment_variables", "/api/list_environment_variables", "/api/get_config",
         "/api/schema_state/x", "/api/stream_function_logs", "/api/import", "/api/perform_import",
         "/api/export/request/zip", "/api/streaming_import/x", "/api/v1/list_environment_variables",
         "/api/app_metrics/udf_rate", "/api/dashboard_openapi.json", "/api/check_admin_key",
         "/api/storage/../push_config", "/api/run/../../push_config", "/api/query/x", "/api/queryx", "/api//push_config",
         "/api/actions/./x/../../push_config", "/api/sync/../push_config"]


@pytest.mark.parametrize("path", CLIENT)
def test_client_routes_are_not_admin_routes(path):
    assert not is_admin(path)


@pytest.mark.parametrize("path", ADMIN)
def test_admin_routes_and_hostile_spellings_are(path):
    assert is_admin(path)


@pytest.mark.parametrize("armor,path", [
    ({"rules": [{"priority": 5, "action": "allow"}]}, "convex-gcp:domain.armor.rules[0]"),
    ({"rules": [{"priority": 5, "action": "allow", "expression": "true", "srcIpRanges": ["10.0.0.0/8"]}]}, "convex-gcp:domain.armor.rules[0]"),
    ({"rules": [{"priority": 900, "action": "allow", "expression": "true"}]}, "convex-gcp:domain.armor.rules[0].priority"),
    ({"rules": [{"priority": 7, "action": "allow", "expression": "true"}, {"priority": 7, "action": "deny(403)", "expression": "true"}]},
     "convex-gcp:domain.armor.rules[1].priority"),
    ({"rules": [{"priority": 7, "action": "redirect", "expression": "true"}]}, "convex-gcp:domain.armor.rules[0].action"),
    ({"adminRanges": ["0.0.0.0/33"]}, "convex-gcp:domain.armor.adminRanges"),
    ({"adminRanges": [f"10.{i}.0.0/16" for i in range(10)]}, "convex-gcp:domain.armor.adminRanges"),
])
def test_bad_armor_config_is_a_problem(armor, path):
    plan = prod_with(**armor)
    assert path in plan.error, plan.error


# --------------------------------------------------------------------------- /metrics, HSTS, port 80


BLOCK = [{"priority": 1, "matchRules": [{"fullPathMatch": "/metrics", "ignoreCase": True}, {"prefixMatch": "/metrics/", "ignoreCase": True}],
          "routeAction": {"faultInjectionPolicy": {"abort": {"httpStatus": 404, "percentage": 100}}}}]


def test_metrics_is_answered_by_the_load_balancer_on_every_host(prod_plan):
    urls = next(m.inputs for m in prod_plan.of_type(URLMAP) if m.inputs["name"] == "convex-prod-urls")
    hosts = {rule["pathMatcher"]: rule["hosts"] for rule in urls["hostRules"]}
    assert set(hosts) == {"api", "site", "dashboard"}
    for matcher in urls["pathMatchers"]:
        service = f"convex-prod-{matcher['name']}-id"
        assert matcher == {"name": matcher["name"], "defaultService": service, "routeRules": [{**BLOCK[0], "service": service}]}
    # Any other host (the bare IP) is redirected to the API host, where the rule answers.
    assert urls["defaultUrlRedirect"]["hostRedirect"] == hosts["api"][0] and "defaultService" not in urls


def matched(rules: list[dict], path: str) -> bool:
    """A URL map's route-rule match as Google documents it: the path without its query, exact or by prefix,
    case folded with ignoreCase."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    for rule in rules:
        for m in rule["matchRules"]:
            p, wanted = (path.lower(), {k: v.lower() if isinstance(v, str) else v for k, v in m.items()}) if m.get("ignoreCase") else (path, m)
            if wanted.get("fullPathMatch") == p or ("prefixMatch" in wanted and p.startswith(wanted["prefixMatch"])):
                return True
    return False


@pytest.mark.parametrize("path,blocked", [("/metrics", True), ("/metrics?format=json", True), ("/METRICS", True), ("/Metrics/", True),
                                          ("/metrics/x", True), ("/version", False), ("/api/sync", False), ("/metricsx", False)])
def test_blocked_paths_and_what_stays_open(path, blocked):
    assert matched(BLOCK, path) is blocked


def test_hsts_on_every_https_backend_and_never_on_plain_http(prod_plan):
    assert HSTS_HEADER == "Strict-Transport-Security: max-age=31536000"
    assert {role: b["customResponseHeaders"] for role, b in by_role(prod_plan).items()} == {
        "api": [HSTS_HEADER], "site": [HSTS_HEADER], "dashboard": [HSTS_HEADER]}


def test_port_80_answers_only_the_redirect(prod_plan):
    rules = {r.inputs["portRange"]: r.inputs for r in prod_plan.of_type(RULE)}
    assert set(rules) == {"80", "443"}
    http = next(p for p in prod_plan.of_type("gcp:compute/targetHttpProxy:TargetHttpProxy"))
    assert rules["80"]["target"] == f"{http.inputs['name']}-id"
    assert http.inputs == {"name": "convex-prod-http", "urlMap": "convex-prod-redirect-id"}
    redirect = next(m.inputs for m in prod_plan.of_type(URLMAP) if m.inputs["name"] == "convex-prod-redirect")
    # The whole map: no host rule, no path matcher, no backend; every host and path gets the same redirect.
    assert redirect == {"name": "convex-prod-redirect", "description": "Plain HTTP: redirect to HTTPS",
                        "defaultUrlRedirect": {"httpsRedirect": True, "stripQuery": False, "redirectResponseCode": "MOVED_PERMANENTLY_DEFAULT"}}
    https = next(p for p in prod_plan.of_type("gcp:compute/targetHttpsProxy:TargetHttpsProxy"))
    assert rules["443"]["target"] == f"{https.inputs['name']}-id" and https.inputs["urlMap"] == "convex-prod-urls-id"
