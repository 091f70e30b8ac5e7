"""FrontDoor: the HTTPS entry point. A global external Application Load Balancer (EXTERNAL_MANAGED)
with Google-managed certificates for the API, site and dashboard hosts, host rules to the VM's
ports 3210/3211/6791 through the VM's managed instance group (its named ports), an HTTP→HTTPS redirect, IAP on the
dashboard, an optional Cloud Armor policy and optional Cloud DNS records. See docs/front-door.md."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Optional

import pulumi
import pulumi_gcp as gcp

from convex_gcp.runtime import API_PORT, DASHBOARD_PORT, SITE_PORT
from convex_gcp.settings import ArmorSettings, DomainSettings

# Named ports on the VM's instance group (components/convex_vm.py); each backend service picks its port by name.
PORTS = {"api": API_PORT, "site": SITE_PORT, "dashboard": DASHBOARD_PORT}

# Convex functions stop long before these: actions (and HTTP actions) are limited to 10 minutes,
# so the load balancer never cuts a request Convex would still finish.
SITE_TIMEOUT_SEC = 900
DASHBOARD_TIMEOUT_SEC = 60

# Cloud Armor's default rule has the lowest priority there is.
DEFAULT_RULE_PRIORITY = 2147483647


@dataclass
class FrontDoorArgs:
    prefix: str
    domain: DomainSettings
    is_prod: bool
    zone: str
    # The VM's managed instance group (its `instance_group` URL): the backend of every service.
    instance_group: pulumi.Input[str]
    depends_on: list[pulumi.Resource] = field(default_factory=list)


def certificate_name(prefix: str, role: str, host: str) -> str:
    """A name that changes with the host, so a new certificate is created before the old one goes
    (the proxy still references the old one while Pulumi replaces it)."""
    return f"{prefix}-{role}-{hashlib.sha256(host.encode()).hexdigest()[:8]}"


def backend_timeouts(domain: DomainSettings) -> dict[str, int]:
    """Backend service timeout per role. On the global external ALB the timeout of a backend
    service is also the longest a websocket through it may live, idle or not."""
    return {"api": domain.websocket_timeout_sec, "site": SITE_TIMEOUT_SEC, "dashboard": DASHBOARD_TIMEOUT_SEC}


# HSTS on every HTTPS answer (backend services' custom response headers; the port-80 map only redirects, so
# plain HTTP never carries it, as RFC 6797 section 7.2 wants). One year; no includeSubDomains or preload: the
# hosts' parent domain is the user's, and other names under it may not serve HTTPS.
HSTS_HEADER = "Strict-Transport-Security: max-age=31536000"

# Convex serves its meta routes on every HTTP server it runs, the API port and the site proxy alike
# (get-convex/convex-backend at the pinned commit, crates/common/src/http/mod.rs `meta_routes`: /version and
# /metrics, merged unless set_meta_routes_enabled(false), which nothing calls). /metrics is Prometheus data
# for operators, not clients: the URL map answers it 404 on every host. /version stays: clients, the uptime
# check and the health check read it.
BLOCKED_PATHS = ("/metrics",)
BLOCKED_STATUS = 404

# The API host's client routes under /api (crates/local_backend/src/router.rs `router`, migrated_api_routes
# and public_api.rs `public_api_router` at the pinned commit): the sync websocket, the HTTP API for functions,
# file storage, and the callbacks of Node actions. Every other /api path is the CLI's, the dashboard's, or
# the platform API (push_config, deploy2/*, import, export/*, update_environment_variables, v1/*, ...).
CLIENT_API_PATHS = (
    r"^/api/(([^/]+/)?sync|query|query_ts|query_at_ts|query_batch|mutation|action|function|public_openapi\\.json"
    # Nested client routes, segment by segment; a segment never starts with a dot, so `..` cannot climb out.
    r"|(run|storage|actions)(/[A-Za-z0-9_:-][A-Za-z0-9_.:-]*)+)$"
)
ADMIN_PATH_EXPRESSION = f"request.path.startsWith('/api/') && !request.path.matches('{CLIENT_API_PATHS}')"
# Cloud Armor: at most five subexpressions per expression, so an allow rule takes the path test (two) and
# at most three ranges.
ADMIN_RANGES_PER_RULE = 3
ADMIN_PRIORITY, RATE_PRIORITY = 900, 1000


def _src_match(ranges: list[str]) -> gcp.compute.SecurityPolicyRuleMatchArgs:
    return gcp.compute.SecurityPolicyRuleMatchArgs(versioned_expr="SRC_IPS_V1", config=gcp.compute.SecurityPolicyRuleMatchConfigArgs(src_ip_ranges=ranges))


def _expr_match(expression: str) -> gcp.compute.SecurityPolicyRuleMatchArgs:
    return gcp.compute.SecurityPolicyRuleMatchArgs(expr=gcp.compute.SecurityPolicyRuleMatchExprArgs(expression=expression))


def admin_rules(armor: ArmorSettings) -> list[gcp.compute.SecurityPolicyRuleArgs]:
    """Admin routes from armor.adminRanges only: allow rules by chunks of ranges, then deny the rest."""
    if not armor.admin_ranges:
        return []
    rules = []
    chunks = [armor.admin_ranges[i:i + ADMIN_RANGES_PER_RULE] for i in range(0, len(armor.admin_ranges), ADMIN_RANGES_PER_RULE)]
    for n, chunk in enumerate(chunks):
        sources = " || ".join(f"inIpRange(origin.ip, '{r}')" for r in chunk)
        rules.append(gcp.compute.SecurityPolicyRuleArgs(
            priority=ADMIN_PRIORITY + n, description="Admin routes from the admin ranges", action="allow",
            match=_expr_match(f"{ADMIN_PATH_EXPRESSION} && ({sources})")))
    rules.append(gcp.compute.SecurityPolicyRuleArgs(
        priority=ADMIN_PRIORITY + len(chunks), description="Admin routes from anywhere else", action="deny(403)",
        match=_expr_match(ADMIN_PATH_EXPRESSION)))
    return rules


def armor_rules(armor: ArmorSettings, admin: bool) -> list[gcp.compute.SecurityPolicyRuleArgs]:
    """The user's rules (1-899), the admin-route rules (900s, API host only), allowed (or all) sources rate
    limited per client IP (1000), and the default: deny what an allow-list does not name, else allow."""
    rules = [
        gcp.compute.SecurityPolicyRuleArgs(
            priority=rule.priority, action=rule.action, description=rule.description or f"User rule {rule.priority}",
            preview=rule.preview,
            match=_expr_match(rule.expression) if rule.expression is not None else _src_match(rule.src_ip_ranges))
        for rule in sorted(armor.rules, key=lambda r: r.priority)
    ]
    if admin:
        rules += admin_rules(armor)
    sources = armor.allow_ranges or ["*"]
    limit = armor.rate_limit
    if limit is not None:
        ban = limit.ban_duration_sec is not None
        rules.append(
            gcp.compute.SecurityPolicyRuleArgs(
                priority=RATE_PRIORITY,
                description="Rate limit per client IP" + (" with a ban" if ban else ""),
                action="rate_based_ban" if ban else "throttle",
                match=_src_match(sources),
                rate_limit_options=gcp.compute.SecurityPolicyRuleRateLimitOptionsArgs(
                    conform_action="allow",
                    exceed_action="deny(429)",
                    enforce_on_key="IP",
                    rate_limit_threshold=gcp.compute.SecurityPolicyRuleRateLimitOptionsRateLimitThresholdArgs(
                        count=limit.count, interval_sec=limit.interval_sec
                    ),
                    ban_duration_sec=limit.ban_duration_sec,
                ),
            )
        )
    elif armor.allow_ranges:
        rules.append(gcp.compute.SecurityPolicyRuleArgs(priority=RATE_PRIORITY, description="Allow-list", action="allow", match=_src_match(sources)))
    rules.append(
        gcp.compute.SecurityPolicyRuleArgs(
            priority=DEFAULT_RULE_PRIORITY,
            description="Default: deny what the allow-list does not name" if armor.allow_ranges else "Default: allow",
            action="deny(403)" if armor.allow_ranges else "allow",
            match=_src_match(["*"]),
        )
    )
    return rules


def blocked_path_rules(service: pulumi.Input[str]) -> list[gcp.compute.URLMapPathMatcherRouteRuleArgs]:
    """Route rules answering BLOCKED_PATHS with BLOCKED_STATUS before any backend sees them (any case, with
    or without a trailing path; a query string does not change the path the map matches)."""
    return [
        gcp.compute.URLMapPathMatcherRouteRuleArgs(
            priority=1,
            match_rules=[m for path in BLOCKED_PATHS for m in (
                gcp.compute.URLMapPathMatcherRouteRuleMatchRuleArgs(full_path_match=path, ignore_case=True),
                gcp.compute.URLMapPathMatcherRouteRuleMatchRuleArgs(prefix_match=f"{path}/", ignore_case=True),
            )],
            service=service,
            route_action=gcp.compute.URLMapPathMatcherRouteRuleRouteActionArgs(
                fault_injection_policy=gcp.compute.URLMapPathMatcherRouteRuleRouteActionFaultInjectionPolicyArgs(
                    abort=gcp.compute.URLMapPathMatcherRouteRuleRouteActionFaultInjectionPolicyAbortArgs(http_status=BLOCKED_STATUS, percentage=100)
                )
            ),
        )
    ]


def _short(host: str) -> str:
    return hashlib.sha256(host.encode()).hexdigest()[:8]


def _get(record: Any, key: str) -> Any:
    if record is None:
        return None
    return record.get(key) if isinstance(record, dict) else getattr(record, key, None)


@dataclass(frozen=True)
class CertificatePlan:
    use_map: bool
    refusals: list[str]
    warnings: list[str]


def certificate_plan(served: dict[str, list[str]], active: dict[str, set[str]], map_in_use: bool) -> CertificatePlan:
    """Where the HTTPS proxy takes its certificates from, and what to refuse, given the hosts served per role
    (main first), the hosts whose Certificate Manager certificate is ACTIVE per role, and whether the proxy
    serves from the certificate map now.

    - A main host whose certificate is not ACTIVE while another host of its role has an ACTIVE one is a move
      of traffic onto a name without a valid certificate: refused, with the way to serve it first.
    - The proxy switches to the map only once every main host's certificate is ACTIVE (until then the classic
      certificates serve), and stays on it once there (a new role's host provisions without traffic)."""
    refusals, warnings = [], []
    for role, hosts in served.items():
        main, others = hosts[0], active.get(role, set()) - {hosts[0]}
        if main not in active.get(role, set()) and others:
            path = f"convex-gcp:domain.{role}Host"
            refusals.append(
                f"{path}: {main!r} has no ACTIVE certificate yet, and {', '.join(sorted(others))} has: clients would move to a name "
                f"without a valid certificate (a TLS outage). Serve it first, keeping the current host as {role}Host: "
                f"pulumi config set --path '{path}' {sorted(others)[0]} && pulumi config set --path 'convex-gcp:domain.additionalHosts.{role}[0]' {main}; "
                f"run pulumi up, wait for ACTIVE (gcloud certificate-manager certificates list), then swap them (docs/front-door.md)."
            )
    pending = sorted(host for hosts in served.values() for host in hosts if host not in set().union(*active.values(), set()))
    all_main_active = all(hosts[0] in active.get(role, set()) for role, hosts in served.items())
    use_map = map_in_use or all_main_active
    if pending:
        warnings.append(
            f"Certificate Manager certificates not ACTIVE yet for {', '.join(pending)}: "
            + ("they provision through DNS authorization without traffic; " if use_map else
               "the HTTPS proxy keeps its classic certificates until every main host's is ACTIVE; ")
            + "run pulumi up again once they are (docs/front-door.md)"
        )
    return CertificatePlan(use_map=use_map, refusals=refusals, warnings=warnings)


def active_certificates(prefix: str) -> dict[str, set[str]]:
    """Role -> hosts whose Certificate Manager certificate (named certificate_name(prefix, role, host)) is ACTIVE
    now. Read at preview, so the plan shows the proxy's source; nothing found on a new stack."""
    found: dict[str, set[str]] = {}
    try:
        result = gcp.certificatemanager.get_certificates()
    except Exception as error:  # noqa: BLE001 - first deploy: the API is enabled by this very update
        # Nothing known ACTIVE: the proxy keeps the classic certificates, which is safe; only the refusal of
        # a host move cannot be made, so say so.
        pulumi.log.warn(f"cannot list Certificate Manager certificates ({str(error).splitlines()[0][:200]}): the HTTPS proxy "
                        "keeps its classic certificates, and a host move is not checked for an ACTIVE certificate this time")
        return found
    for cert in getattr(result, "certificates", None) or []:
        short_name = str(_get(cert, "name") or "").rsplit("/", 1)[-1]
        role = next((r for r in PORTS if short_name.startswith(f"{prefix}-{r}-")), None)
        managed = (_get(cert, "manageds") or _get(cert, "managed") or [None])
        managed = managed[0] if isinstance(managed, list) else managed
        if role and managed is not None and _get(managed, "state") == "ACTIVE":
            found.setdefault(role, set()).update(_get(managed, "domains") or [])
    return found


def proxy_uses_map(proxy_name: str) -> bool:
    """Whether the HTTPS proxy serves from a certificate map now; False when it does not exist yet."""
    try:
        return bool(getattr(gcp.compute.get_target_https_proxy(name=proxy_name), "certificate_map", None))
    except Exception:  # noqa: BLE001 - a new stack has no proxy: the invoke answers 404
        return False


class FrontDoor(pulumi.ComponentResource):
    """Owns the global IP, certificates, SSL policy, health checks, backend services,
    URL maps, proxies, forwarding rules, the IAP grants on the dashboard, the optional Cloud Armor
    policy and the optional DNS records."""

    def __init__(self, name: str, args: FrontDoorArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("convex-gcp:index:FrontDoor", name, None, opts)
        d, prefix = args.domain, args.prefix
        child = pulumi.ResourceOptions(parent=self, depends_on=args.depends_on)
        hosts = d.hosts

        # DNS points at this address: keep it across updates, and protect it in prod.
        self.address = gcp.compute.GlobalAddress(
            f"{name}-ip",
            name=f"{prefix}-lb-ip",
            address_type="EXTERNAL",
            ip_version="IPV4",
            description="Convex HTTPS front door",
            opts=pulumi.ResourceOptions(parent=self, depends_on=args.depends_on, protect=args.is_prod),
        )

        served = d.served_hosts
        # With a Cloud DNS zone, Certificate Manager certificates with DNS authorization: they become ACTIVE
        # before any traffic reaches the host. The proxy serves them from the certificate map once each main
        # host's is ACTIVE, and keeps the classic certificates until then (certificate_plan).
        self.cert_map = None
        use_map = False
        if d.managed_zone:
            plan = certificate_plan(served, active_certificates(prefix), proxy_uses_map(f"{prefix}-https"))
            if plan.refusals:
                raise pulumi.RunError("\n".join(plan.refusals))
            for warning in plan.warnings:
                pulumi.log.warn(warning, resource=self)
            use_map = plan.use_map
            self.cert_map = self._certificate_manager(name, prefix, d.managed_zone, served, child)

        # Classic Google-managed certificates (load-balancer authorization) without a zone, or until the map
        # takes over. One per host: a host whose DNS is not ready yet does not hold back the others.
        self.certificates = {}
        if not use_map:
            for role, role_hosts in served.items():
                for i, host in enumerate(role_hosts):
                    self.certificates[host] = gcp.compute.ManagedSslCertificate(
                        f"{name}-cert-{role}-{_short(host)}",
                        name=certificate_name(prefix, role, host),
                        managed=gcp.compute.ManagedSslCertificateManagedArgs(domains=[host]),
                        # The name differs per host, so create-first cannot collide, and the HTTPS proxy moves to the
                        # new certificate before the old one is deleted. Without this, pulumi-terraform-bridge deletes
                        # first because the auto-nameable `name` is set explicitly (nameRequiresDeleteBeforeReplace,
                        # pkg/tfbridge/schema.go; bridge PR #532) and Google refuses to delete a certificate a proxy
                        # still uses (terraform-provider-google #6147, #15966). The main host keeps the logical
                        # name stacks before additionalHosts gave it.
                        opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(
                            delete_before_replace=False, aliases=[pulumi.Alias(name=f"{name}-cert-{role}")] if i == 0 else None)),
                    )
        ssl_policy = gcp.compute.SSLPolicy(
            f"{name}-tls",
            name=f"{prefix}-tls",
            profile="MODERN",
            min_tls_version="TLS_1_2",
            opts=child,
        )

        # The group follows the VM through every recreation (same name, same IP), so nothing here changes when
        # the VM is replaced.
        self.instance_group = args.instance_group

        # 3211 proxies every path to the app's HTTP actions, so /version is only probed on 3210;
        # both ports are served by the same backend process.
        backend_check = gcp.compute.HealthCheck(
            f"{name}-hc-backend",
            name=f"{prefix}-hc-version",
            check_interval_sec=10,
            timeout_sec=5,
            healthy_threshold=2,
            unhealthy_threshold=3,
            http_health_check=gcp.compute.HealthCheckHttpHealthCheckArgs(port=API_PORT, request_path="/version"),
            log_config=gcp.compute.HealthCheckLogConfigArgs(enable=True),
            opts=child,
        )
        checks = {"api": backend_check, "site": backend_check}
        if "dashboard" in hosts:
            checks["dashboard"] = gcp.compute.HealthCheck(
                f"{name}-hc-dashboard",
                name=f"{prefix}-hc-dashboard",
                check_interval_sec=10,
                timeout_sec=5,
                healthy_threshold=2,
                unhealthy_threshold=3,
                http_health_check=gcp.compute.HealthCheckHttpHealthCheckArgs(port=DASHBOARD_PORT, request_path="/"),
                opts=child,
            )

        # prod always has one, with a per-client throttle (DomainSettings.armor_policy). The API host gets a policy
        # of its own when admin routes are limited to ranges; the site and the dashboard share the other.
        armor = d.armor_policy(args.is_prod)
        self.security_policies: dict[str, gcp.compute.SecurityPolicy] = {}
        if armor is not None:
            self.security_policies["edge"] = gcp.compute.SecurityPolicy(
                f"{name}-armor",
                name=f"{prefix}-armor",
                description="Convex front door: your rules, allow-list and per-IP rate limit",
                type="CLOUD_ARMOR",
                rules=armor_rules(armor, admin=False),
                opts=child,
            )
            if armor.admin_ranges:
                self.security_policies["api"] = gcp.compute.SecurityPolicy(
                    f"{name}-armor-api",
                    name=f"{prefix}-armor-api",
                    description="Convex API host: your rules, admin routes from the admin ranges, per-IP rate limit",
                    type="CLOUD_ARMOR",
                    rules=armor_rules(armor, admin=True),
                    opts=child,
                )
        self.security_policy = self.security_policies.get("edge")

        timeouts = backend_timeouts(d)
        self.backends: dict[str, gcp.compute.BackendService] = {}
        for role in hosts:
            self.backends[role] = gcp.compute.BackendService(
                f"{name}-backend-{role}",
                name=f"{prefix}-{role}",
                load_balancing_scheme="EXTERNAL_MANAGED",
                protocol="HTTP",
                port_name=role,
                timeout_sec=timeouts[role],
                health_checks=checks[role].id,
                backends=[gcp.compute.BackendServiceBackendArgs(group=self.instance_group, balancing_mode="UTILIZATION", capacity_scaler=1.0)],
                security_policy=(self.security_policies.get(role) or self.security_policies.get("edge")).id if self.security_policies else None,
                custom_response_headers=[HSTS_HEADER],
                # IAP asks for a Google identity before the dashboard's own admin-key login.
                iap=gcp.compute.BackendServiceIapArgs(enabled=True) if role == "dashboard" else None,
                log_config=gcp.compute.BackendServiceLogConfigArgs(enable=True, sample_rate=1.0),
                opts=child,
            )

        # Without members nobody passes IAP: the dashboard stays reachable only through an IAP tunnel.
        self.iap_members = []
        if "dashboard" in self.backends:
            self.iap_members = [
                gcp.iap.WebBackendServiceIamMember(
                    f"{name}-iap-{hashlib.sha256(member.encode()).hexdigest()[:8]}",
                    web_backend_service=self.backends["dashboard"].name,
                    role="roles/iap.httpsResourceAccessor",
                    member=member,
                    opts=pulumi.ResourceOptions(parent=self),
                )
                for member in d.dashboard_members
            ]

        self.url_map = gcp.compute.URLMap(
            f"{name}-urls",
            name=f"{prefix}-urls",
            description="Convex: one host per port",
            # Unknown hosts (scanners hitting the bare IP) are sent to the API name, never to a backend.
            default_url_redirect=gcp.compute.URLMapDefaultUrlRedirectArgs(
                host_redirect=d.api_host, https_redirect=True, strip_query=False, redirect_response_code="MOVED_PERMANENTLY_DEFAULT"
            ),
            host_rules=[gcp.compute.URLMapHostRuleArgs(hosts=served[role], path_matcher=role) for role in hosts],
            path_matchers=[
                gcp.compute.URLMapPathMatcherArgs(name=role, default_service=self.backends[role].id, route_rules=blocked_path_rules(self.backends[role].id))
                for role in hosts
            ],
            opts=child,
        )
        https_proxy = gcp.compute.TargetHttpsProxy(
            f"{name}-https",
            name=f"{prefix}-https",
            url_map=self.url_map.id,
            # A certificate map takes precedence over certificates attached directly: one or the other.
            ssl_certificates=None if use_map else [cert.id for cert in self.certificates.values()],
            certificate_map=self.cert_map.id.apply(lambda i: f"//certificatemanager.googleapis.com/{i}") if use_map else None,
            ssl_policy=ssl_policy.id,
            opts=child,
        )
        def forwarding_rule(scheme: str, port: int, target: pulumi.Input[str]) -> gcp.compute.GlobalForwardingRule:
            return gcp.compute.GlobalForwardingRule(
                f"{name}-{scheme}-rule",
                name=f"{prefix}-{scheme}",
                load_balancing_scheme="EXTERNAL_MANAGED",
                ip_protocol="TCP",
                port_range=str(port),
                ip_address=self.address.id,
                target=target,
                opts=child,
            )

        self.https_rule = forwarding_rule("https", 443, https_proxy.id)

        redirect_map = gcp.compute.URLMap(
            f"{name}-redirect",
            name=f"{prefix}-redirect",
            description="Plain HTTP: redirect to HTTPS",
            default_url_redirect=gcp.compute.URLMapDefaultUrlRedirectArgs(
                https_redirect=True, strip_query=False, redirect_response_code="MOVED_PERMANENTLY_DEFAULT"
            ),
            opts=child,
        )
        http_proxy = gcp.compute.TargetHttpProxy(f"{name}-http", name=f"{prefix}-http", url_map=redirect_map.id, opts=child)
        self.http_rule = forwarding_rule("http", 80, http_proxy.id)

        self.records = []
        if d.managed_zone:
            self.records = [
                gcp.dns.RecordSet(
                    f"{name}-dns-{role}-{_short(host)}",
                    managed_zone=d.managed_zone,
                    name=f"{host}.",
                    type="A",
                    ttl=300,
                    rrdatas=[self.address.address],
                    opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(aliases=[pulumi.Alias(name=f"{name}-dns-{role}")] if i == 0 else None)),
                )
                for role, hosts_of_role in served.items()
                for i, host in enumerate(hosts_of_role)
            ]

        self.ip = self.address.address
        self.register_outputs(
            {
                "ip": self.address.address,
                "hosts": hosts,
                "certificates": {host: cert.name for host, cert in self.certificates.items()},
                "certificate_map": self.cert_map.name if self.cert_map else None,
                "url_map": self.url_map.name,
            }
        )

    def _certificate_manager(self, name: str, prefix: str, zone: str, served: dict[str, list[str]],
                             child: pulumi.ResourceOptions) -> gcp.certificatemanager.CertificateMap:
        """Per host: a DNS authorization, its CNAME in the zone, a certificate, a map entry; one map."""
        cert_map = gcp.certificatemanager.CertificateMap(
            f"{name}-certmap", name=f"{prefix}-certs", description="Convex front door certificates", opts=child)
        create_first = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(delete_before_replace=False))
        for role, hosts in served.items():
            for host in hosts:
                short, cm_name = _short(host), certificate_name(prefix, role, host)
                auth = gcp.certificatemanager.DnsAuthorization(
                    f"{name}-auth-{role}-{short}", name=cm_name, domain=host,
                    description=f"Convex {role} host {host}", opts=create_first)
                record = auth.dns_resource_records.apply(lambda records: records[0] if records else None)
                cname = gcp.dns.RecordSet(
                    f"{name}-acme-{role}-{short}",
                    managed_zone=zone,
                    name=record.apply(lambda r: _get(r, "name")),
                    type=record.apply(lambda r: _get(r, "type")),
                    ttl=300,
                    rrdatas=[record.apply(lambda r: _get(r, "data"))],
                    opts=child,
                )
                certificate = gcp.certificatemanager.Certificate(
                    f"{name}-cmcert-{role}-{short}",
                    name=cm_name,
                    description=f"Convex {role} host {host}",
                    managed=gcp.certificatemanager.CertificateManagedArgs(domains=[host], dns_authorizations=[auth.id]),
                    # Issued once the CNAME answers; no A record or traffic is needed for that.
                    opts=pulumi.ResourceOptions.merge(create_first, pulumi.ResourceOptions(depends_on=[cname])),
                )
                gcp.certificatemanager.CertificateMapEntry(
                    f"{name}-entry-{role}-{short}",
                    name=cm_name,
                    map=cert_map.name,
                    hostname=host,
                    certificates=[certificate.id],
                    opts=create_first,
                )
        return cert_map
