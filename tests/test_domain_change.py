"""Changing a host with no TLS outage (docs/front-door.md): with a Cloud DNS zone, Certificate Manager
certificates with DNS authorization, served from a certificate map once ACTIVE; a main host whose certificate
is not ACTIVE while its role's other host's is, is refused; additionalHosts keeps a host served beside."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from components import front_door
from components.front_door import active_certificates, certificate_name, certificate_plan
from tests.conftest import run_plan_with, stack_object

OLD, NEW = "api.old.example.com", "api.new.example.com"
SITE, DASH = "site.convex.example.com", "dashboard.convex.example.com"


def served(api=(NEW,), site=(SITE,), dash=(DASH,)) -> dict[str, list[str]]:
    return {"api": list(api), "site": list(site), "dashboard": list(dash)}


# --------------------------------------------------------------------------- the decision


def test_a_new_stack_keeps_classic_certificates_until_every_main_host_is_active():
    plan = certificate_plan(served(), {}, map_in_use=False)
    assert plan == front_door.CertificatePlan(False, [], [plan.warnings[0]])
    assert "keeps its classic certificates" in plan.warnings[0] and NEW in plan.warnings[0]
    partial = certificate_plan(served(), {"api": {NEW}}, map_in_use=False)  # migrating: site still provisioning
    assert not partial.use_map and not partial.refusals
    done = certificate_plan(served(), {"api": {NEW}, "site": {SITE}, "dashboard": {DASH}}, map_in_use=False)
    assert done == front_door.CertificatePlan(True, [], [])


def test_moving_traffic_to_a_host_without_an_active_certificate_is_refused():
    for in_use in (False, True):
        plan = certificate_plan(served(), {"api": {OLD}, "site": {SITE}, "dashboard": {DASH}}, map_in_use=in_use)
        (refusal,) = plan.refusals
        assert refusal.startswith(f"convex-gcp:domain.apiHost: '{NEW}' has no ACTIVE certificate yet, and {OLD} has")
        assert f"pulumi config set --path 'convex-gcp:domain.apiHost' {OLD}" in refusal
        assert f"pulumi config set --path 'convex-gcp:domain.additionalHosts.api[0]' {NEW}" in refusal


def test_serving_the_new_host_first_then_swapping_is_allowed():
    # Step 1: the old host stays main, the new one is served beside it and provisions without traffic.
    step1 = certificate_plan(served(api=(OLD, NEW)), {"api": {OLD}, "site": {SITE}, "dashboard": {DASH}}, map_in_use=True)
    assert step1.use_map and not step1.refusals and NEW in step1.warnings[0]
    # Step 2, once ACTIVE: swap; the old one is still served until removed.
    step2 = certificate_plan(served(api=(NEW, OLD)), {"api": {OLD, NEW}, "site": {SITE}, "dashboard": {DASH}}, map_in_use=True)
    assert step2 == front_door.CertificatePlan(True, [], [])


def test_a_new_role_on_a_map_provisions_without_moving_traffic():
    plan = certificate_plan(served(), {"api": {NEW}, "site": {SITE}}, map_in_use=True)
    assert plan.use_map and not plan.refusals and DASH in plan.warnings[0]


def test_active_certificates_reads_this_stacks_active_ones(monkeypatch):
    def cert(name, state, domains):
        return SimpleNamespace(name=f"projects/p/locations/global/certificates/{name}", manageds=[SimpleNamespace(state=state, domains=domains)])

    result = SimpleNamespace(certificates=[
        cert(certificate_name("convex-prod", "api", OLD), "ACTIVE", [OLD]),
        cert(certificate_name("convex-prod", "api", NEW), "PROVISIONING", [NEW]),
        cert(certificate_name("convex-dev", "site", SITE), "ACTIVE", [SITE]),  # another stack's
        cert("unrelated", "ACTIVE", ["x.example.com"]),
    ])
    monkeypatch.setattr(front_door.gcp.certificatemanager, "get_certificates", lambda: result)
    assert active_certificates("convex-prod") == {"api": {OLD}}


# --------------------------------------------------------------------------- the declared resources


def prod_domain(**changes) -> object:
    from tools.offline_values import replace_placeholders

    domain = {**stack_object("prod", "domain"), **changes}
    return run_plan_with("prod", replace_placeholders({"convex-gcp:domain": json.dumps(domain)}))


def test_with_a_zone_each_served_host_gets_dns_authorization_a_certificate_and_a_map_entry():
    plan = prod_domain(managedZone="convex-zone", additionalHosts={"api": ["api.previous.acmecorp.dev"]})
    assert not plan.error, plan.error
    hosts = {"api.convex.acmecorp.dev", "api.previous.acmecorp.dev", "site.convex.acmecorp.dev", "dashboard.convex.acmecorp.dev"}
    auths = {r.inputs["domain"]: r for r in plan.of_type("gcp:certificatemanager/dnsAuthorization:DnsAuthorization")}
    certs = {r.inputs["managed"]["domains"][0]: r for r in plan.of_type("gcp:certificatemanager/certificate:Certificate")}
    entries = {r.inputs["hostname"]: r.inputs for r in plan.of_type("gcp:certificatemanager/certificateMapEntry:CertificateMapEntry")}
    records = {r.inputs["name"]: r for r in plan.of_type("gcp:dns/recordSet:RecordSet")}
    (cert_map,) = plan.of_type("gcp:certificatemanager/certificateMap:CertificateMap")
    assert set(auths) == set(certs) == set(entries) == hosts
    for host in hosts:
        auth, cert = auths[host], certs[host]
        cname = records[f"_acme-challenge.{host}."]
        assert cname.inputs == {"managedZone": "convex-zone", "name": f"_acme-challenge.{host}.", "type": "CNAME", "ttl": 300,
                                "rrdatas": [f"{auth.inputs['name']}.1.authorize.certificatemanager.goog."]}
        assert cert.inputs["managed"]["dnsAuthorizations"] == [f"projects/example-convex-prod/locations/global/dnsAuthorizations/{auth.inputs['name']}"]
        assert cname.urn in cert.dependencies and cert.delete_before_replace is False
        assert entries[host]["map"] == cert_map.inputs["name"]
        assert entries[host]["certificates"] == [f"projects/example-convex-prod/locations/global/certificates/{cert.inputs['name']}"]
        assert records[f"{host}."].inputs["type"] == "A"
    # Offline nothing is ACTIVE: the proxy keeps classic certificates for every served host, and says why.
    proxy = plan.one("gcp:compute/targetHttpsProxy:TargetHttpsProxy").inputs
    assert "certificateMap" not in proxy and len(proxy["sslCertificates"]) == 4
    assert any("keeps its classic certificates" in w for w in plan.warnings)
    assert "certificatemanager.googleapis.com" in {r.inputs["service"] for r in plan.of_type("gcp:projects/service:Service")}
    urls = next(m.inputs for m in plan.of_type("gcp:compute/uRLMap:URLMap") if m.inputs["name"] == "convex-prod-urls")
    assert {r["pathMatcher"]: r["hosts"] for r in urls["hostRules"]}["api"] == ["api.convex.acmecorp.dev", "api.previous.acmecorp.dev"]


def test_without_a_zone_the_old_host_stays_served_with_its_classic_certificate(prod_plan):
    plan = prod_domain(additionalHosts={"api": ["api.previous.acmecorp.dev"]})
    assert not plan.of_type("gcp:certificatemanager/certificate:Certificate")
    domains = sorted(c.inputs["managed"]["domains"][0] for c in plan.of_type("gcp:compute/managedSslCertificate:ManagedSslCertificate"))
    assert domains == ["api.convex.acmecorp.dev", "api.previous.acmecorp.dev", "dashboard.convex.acmecorp.dev", "site.convex.acmecorp.dev"]
    # The main hosts' certificates keep the logical names stacks had before (aliases), so nothing is replaced.
    main = [c for c in prod_plan.of_type("gcp:compute/managedSslCertificate:ManagedSslCertificate")]
    assert len(main) == 3 and all(c.delete_before_replace is False for c in main)


@pytest.mark.parametrize("change,path", [
    ({"additionalHosts": {"api": ["site.convex.acmecorp.dev"]}}, "convex-gcp:domain.additionalHosts.api[0]"),
    ({"additionalHosts": {"api": ["Not A Host"]}}, "convex-gcp:domain.additionalHosts"),
    ({"additionalHosts": {"web": ["w.acmecorp.dev"]}}, "convex-gcp:domain.additionalHosts"),
])
def test_bad_additional_hosts_are_problems(change, path):
    plan = prod_domain(**change)
    assert path in plan.error, plan.error


def test_an_additional_host_needs_its_role():
    from convex_gcp.settings import ConfigError, load_settings
    from tools.plan import stack_config

    config = stack_config("dev")
    config["convex-gcp:network"] = json.dumps({**stack_object("dev", "network"), "apiSourceRanges": []})
    config["convex-gcp:convex"] = json.dumps({**stack_object("dev", "convex"), "dashboard": False})
    config["convex-gcp:domain"] = json.dumps({"apiHost": "api.a.io", "siteHost": "site.a.io", "additionalHosts": {"dashboard": ["d.a.io"]}})
    with pytest.raises(ConfigError) as error:
        load_settings(config, "dev")
    assert "convex-gcp:domain.additionalHosts.dashboard[0]" in str(error.value) and "there is no dashboard host" in str(error.value)


def test_when_certificates_cannot_be_listed_the_classic_ones_stay(monkeypatch):
    warned = []

    def fail():
        raise Exception("googleapi: Error 403: Certificate Manager API has not been used in project p\nmore")

    monkeypatch.setattr(front_door.gcp.certificatemanager, "get_certificates", fail)
    monkeypatch.setattr(front_door.pulumi.log, "warn", lambda message, *a, **k: warned.append(message))
    assert active_certificates("convex-prod") == {}
    assert "keeps its classic certificates" in warned[0] and "Error 403" in warned[0]
    assert not certificate_plan(served(), {}, map_in_use=False).use_map
