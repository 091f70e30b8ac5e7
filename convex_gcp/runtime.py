"""What the VM runs, rendered as the instance metadata the startup script reads.

Non-secret settings travel as metadata so a `pulumi preview` diff shows them; secrets
travel only as Secret Manager ids. See docs/vm-runtime.md for the contract.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import quote

from . import convex_env, db_grants
from .images import BACKEND_IMAGE, COLLECTOR_IMAGE, DASHBOARD_IMAGE, PROXY_IMAGE
from .settings import Settings, resource_prefix

API_PORT, SITE_PORT, DASHBOARD_PORT = 3210, 3211, 6791
PROXY_PORT, PROXY_HEALTH_PORT = 5432, 9090
DATA_DEVICE_NAME = "convex-data"
# The autohealing health endpoint (vm/health/): a systemd socket on the host, outside Docker.
HEALTH_PORT, HEALTH_PATH = 3290, "/health"
HEALTH_SCRIPT = "/etc/convex-gcp/health.sh"
# Where the VM mounts the instance's server CA bundle in the backend container (ssl mode).
SQL_CA_FILE = "/convex-gcp/sql-ca.pem"
# Docker networks on the VM: convex-db holds the backend, convex-web the dashboard, convex-proxy the proxy
# alone (fixed address, which the backend connects to). vm/isolate.sh lets only convex-proxy's bridge reach
# the metadata server, and only convex-db's reach the proxy's port.
DB_SUBNET, WEB_SUBNET = "172.30.250.0/28", "172.30.250.16/28"
PROXY_SUBNET, PROXY_IP = "172.30.250.32/28", "172.30.250.34"
# systemd unit templates (real files): one per container, rendered here, installed by the VM.
def vm_dir() -> Path:
    """vm/ of a checkout; in an installed package the same files are convex_gcp/vm (pyproject.toml maps them)."""
    checkout = Path(__file__).resolve().parent.parent / "vm"
    return checkout if (checkout / "startup.sh").is_file() else Path(__file__).resolve().parent / "vm"


UNIT_DIR = vm_dir() / "units"
HEALTH_DIR = vm_dir() / "health"
UNITS = ("cloudsql-proxy", "convex-backend", "convex-dashboard", "convex-export", "convex-export-timer", "convex-metrics",
         "convex-collector", "convex-upgrade")
# The export script the export unit runs (metadata key convex-gcp-export-script).
EXPORT_SCRIPT = UNIT_DIR.parent / "convex-export.sh"
# Host and container isolation, asserted by the startup script and before every container start.
ISOLATE_SCRIPT = UNIT_DIR.parent / "isolate.sh"
# Scripts the units run (vm/<name>.sh), delivered verbatim as metadata convex-gcp-script-<name>;
# the VM keeps them in its run directory and runs them with `bash FILE`.
SCRIPT_DIR = UNIT_DIR.parent
SCRIPTS = ("convex-upgrade",)


def export_metric_type(prefix: str) -> str:
    """The age-of-the-newest-export gauge, one per stack: two stacks in one project never share (or
    delete) a descriptor (components/exports.py declares it, vm/convex-export.sh writes it)."""
    return f"custom.googleapis.com/convex_gcp/{prefix}/export_age_seconds"


# Convex's own metrics (with monitoring): vm/convex-metrics.sh serves them rewritten on this loopback
# port; the collector (vm/collector.json) scrapes it and keeps only these families, the ones the
# alerts and the dashboard read (components/monitoring.py CONVEX_METRICS).
METRICS_PORT = 9464
METRICS_SCRIPT = UNIT_DIR.parent / "convex-metrics.sh"
COLLECTOR_CONFIG = UNIT_DIR.parent / "collector.json"
KEEP_METRICS = (
    "http_handle_duration_seconds_count_total", "http_handle_duration_seconds_sum_total",
    "udf_execute_seconds_count_total", "udf_execute_seconds_sum_total",
    "postgres_get_connection_seconds_count_total", "postgres_get_connection_seconds_sum_total",
    "isolate_out_of_memory_total", "sync_connect_total",
)
_PLACEHOLDER = re.compile(r"@[A-Z_]+@")


@dataclass(frozen=True)
class RuntimeInputs:
    """Values known only once resources exist (resolved Outputs)."""

    project: str
    connection_name: str
    public_host: str
    database_user: str
    instance_secret_id: str
    admin_key_secret_id: str
    db_password_secret_id: str = ""
    # ssl mode: the instance's DNS name (no trailing dot); plaintext mode: its private IP.
    sql_dns_name: str = ""
    sql_private_ip: str = ""
    # BACKEND_IMAGE/DASHBOARD_IMAGE/PROXY_IMAGE -> `repo@sha256:...`, resolved at preview (components/convex_vm.py).
    pinned_images: Optional[dict[str, str]] = None
    # The exports bucket (components/exports.py); empty: no scheduled exports.
    export_bucket: str = ""


def proxy_args(settings: Settings, connection_name: str) -> list[str]:
    """Auth Proxy flags: private IP only, listening inside its container, health endpoints on."""
    args = [
        "--private-ip",
        "--address=0.0.0.0",
        f"--port={PROXY_PORT}",
        "--health-check",
        "--http-address=0.0.0.0",
        f"--http-port={PROXY_HEALTH_PORT}",
        "--structured-logs",
        # Convex gets SIGINT and drains first; let in-flight queries finish on restarts.
        "--max-sigterm-delay=30s",
        "--exit-zero-on-sigterm",
        # /readiness does not depend on the instance (cloud-sql-proxy PR #2207, v2.11.1) and with --port
        # nothing dials it at start; this makes the proxy exit when the instance is unreachable
        # (cmd/root.go "run-connection-test", internal/proxy/proxy.go Serve), which the VM reports.
        "--run-connection-test",
    ]
    if settings.iam_auth:
        args.append("--auto-iam-authn")
    args.append(connection_name)
    return args


def postgres_url(user: str, host: str, port: int, params: dict[str, str]) -> str:
    """A cluster URL without a database path: Convex adds the database itself."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"postgresql://{quote(user, safe='')}@{host}:{port}" + (f"?{query}" if query else "")


def origins(settings: Settings, public_host: str) -> dict[str, str]:
    """Public URLs. With a domain they are the front door's https names and public_host is unused."""
    domain = settings.domain
    if domain is not None:
        return {
            "convex_url": f"https://{domain.api_host}",
            "convex_site_url": f"https://{domain.site_host}",
            "dashboard_url": f"https://{domain.dashboard_host}" if domain.dashboard_host else "",
        }
    if not settings.network.public_http_without_tls:
        # Clients reach Convex through an IAP tunnel on their own machine (docs/delivery.md), so the
        # origins Convex hands out (and the dashboard calls) are the tunnel's local ports.
        public_host = "localhost"
    return {
        "convex_url": f"http://{public_host}:{API_PORT}",
        "convex_site_url": f"http://{public_host}:{SITE_PORT}",
        "dashboard_url": f"http://{public_host}:{DASHBOARD_PORT}",
    }


def backend_env(settings: Settings, inputs: RuntimeInputs) -> dict[str, str]:
    """The backend's non-secret environment. INSTANCE_SECRET (and a password) come from Secret Manager."""
    urls = origins(settings, inputs.public_host)
    env = {
        "INSTANCE_NAME": settings.convex.instance_name,
        "CONVEX_CLOUD_ORIGIN": urls["convex_url"],
        "CONVEX_SITE_ORIGIN": urls["convex_site_url"],
        **database_env(settings, inputs),
        "POSTGRES_MAX_CONNECTIONS": str(settings.pool_size),
        "RUST_LOG": settings.convex.log_level,
        "LOG_FORMAT": "json",
    }
    # Convex treats any non-empty value as on, so "off" means absent.
    if settings.convex.disable_beacon:
        env["DISABLE_BEACON"] = "1"
    if settings.convex.redact_logs_to_client:
        env["REDACT_LOGS_TO_CLIENT"] = "1"
    added = convex_env.variables(settings.convex)
    clash = sorted(set(added) & set(env))
    if clash:  # convex_env.OWNED refuses these at load; a new variable of the program's must join it
        raise ValueError(f"convex.env would override the program's {', '.join(clash)}")
    return {**env, **added}


def database_env(settings: Settings, inputs: RuntimeInputs) -> dict[str, str]:
    """How Convex reaches Postgres in each connection mode (docs/connection-modes.md)."""
    mode = settings.connection_mode
    if mode == "ssl":
        if not inputs.sql_dns_name:
            raise ValueError("connectionMode ssl needs the instance's DNS name")
        # No query: without DO_NOT_REQUIRE_SSL Convex adds sslmode=require and verifies the certificate
        # (rustls: chain to PG_CA_FILE or the system roots, and the host name against the SAN).
        return {
            "POSTGRES_URL": postgres_url(inputs.database_user, inputs.sql_dns_name, PROXY_PORT, {}),
            "PG_CA_FILE": SQL_CA_FILE,
        }
    if mode == "plaintext":
        return {
            "POSTGRES_URL": postgres_url(inputs.database_user, inputs.sql_private_ip, PROXY_PORT, {"sslmode": "disable", "connect_timeout": "30"}),
            "DO_NOT_REQUIRE_SSL": "1",
        }
    # The proxy's local listener speaks plaintext; the proxy itself encrypts to Cloud SQL.
    return {
        "POSTGRES_URL": postgres_url(inputs.database_user, PROXY_IP, PROXY_PORT, {"sslmode": "disable", "connect_timeout": "30"}),
        "DO_NOT_REQUIRE_SSL": "1",
    }


def dashboard_env(settings: Settings, inputs: RuntimeInputs) -> dict[str, str]:
    if not settings.convex.dashboard:
        return {}
    return {"NEXT_PUBLIC_DEPLOYMENT_URL": origins(settings, inputs.public_host)["convex_url"]}


def vm_config(settings: Settings, inputs: RuntimeInputs) -> dict[str, str]:
    """Settings of the startup script itself."""
    version = settings.convex.version
    mode = settings.connection_mode
    config = {
        "CONNECTION_MODE": mode,
        "PROJECT_ID": inputs.project,
        "BACKEND_IMAGE": BACKEND_IMAGE.format(tag=version),
        "DASHBOARD_IMAGE": DASHBOARD_IMAGE.format(tag=version),
        "DASHBOARD_ENABLED": "true" if settings.convex.dashboard else "false",
        "DATA_DEVICE_NAME": DATA_DEVICE_NAME,
        "INSTANCE_SECRET_ID": inputs.instance_secret_id,
        "ADMIN_KEY_SECRET_ID": inputs.admin_key_secret_id,
        "DB_PASSWORD_SECRET_ID": inputs.db_password_secret_id,
    }
    config["DB_SUBNET"], config["WEB_SUBNET"] = DB_SUBNET, WEB_SUBNET
    if settings.monitoring_enabled:
        config["METRICS_ENABLED"] = "true"
        config["COLLECTOR_IMAGE"] = COLLECTOR_IMAGE
        # The Prometheus namespace label of its metrics: the alerts select on it (components/monitoring.py).
        config["METRICS_NAMESPACE"] = resource_prefix(settings.stack)
    if mode == "proxy":
        config["PROXY_SUBNET"], config["PROXY_IP"] = PROXY_SUBNET, PROXY_IP
        config["PROXY_IMAGE"] = PROXY_IMAGE.format(tag=settings.convex.proxy_version)
        config["PROXY_ARGS"] = " ".join(proxy_args(settings, inputs.connection_name))
    if mode == "ssl":
        # The VM reads the server CA bundle (current + upcoming CAs) from the SQL Admin API itself.
        config["SQL_INSTANCE"] = inputs.connection_name
    if settings.exports.enabled and inputs.export_bucket:
        config["EXPORT_BUCKET"] = inputs.export_bucket
        config["EXPORT_INTERVAL_S"] = str(settings.export_interval_hours * 3600)
        config["EXPORT_INCLUDE_STORAGE"] = "true" if settings.exports.include_storage else "false"
        config["EXPORT_METRIC"] = export_metric_type(resource_prefix(settings.stack))
    if settings.iam_auth:
        # The VM grants the Convex role its privileges at every boot (vm/startup.sh ensure_db_grants).
        config["DB_GRANT_ACCOUNT"] = db_grants.grant_account_email(resource_prefix(settings.stack), inputs.project)
        config["SQL_INSTANCE_NAME"] = inputs.connection_name.rsplit(":", 1)[-1]
    config.update({key: ref for key, ref in (inputs.pinned_images or {}).items() if key in config})
    return config


_KEY = re.compile(r"^[A-Z][A-Z0-9_]*$")


def render_env(values: dict[str, str]) -> str:
    """KEY=VALUE lines, sorted so diffs are stable; the script parses, never sources, them."""
    lines = []
    for key in sorted(values):
        value = values[key]
        if not _KEY.match(key) or "\n" in value or "\r" in value:
            raise ValueError(f"cannot render {key!r} as a single KEY=VALUE line")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def unit_file(name: str) -> str:
    """The file a unit name stands for: `convex-export-timer` is convex-export.timer (metadata keys
    allow no dots), every other name a .service."""
    return name[: -len("-timer")] + ".timer" if name.endswith("-timer") else f"{name}.service"


def render_unit(name: str, values: dict[str, str]) -> str:
    """Fill a unit template's @KEY@ placeholders; {{KEY}} ones (VM paths) are left for the VM."""
    text = (UNIT_DIR / unit_file(name)).read_text()
    for key, value in values.items():
        if "\n" in value and key not in ("PROXY_DEPENDENCY", "SCRIPT", "CONFIG"):
            raise ValueError(f"unit value {key} spans lines")
        text = text.replace(f"@{key}@", value)
    left = _PLACEHOLDER.findall(text)
    if left:
        raise ValueError(f"{unit_file(name)}: no value for {sorted(set(left))}")
    return text


def standard_input_text(text: str) -> str:
    """`text` as systemd StandardInputText= lines (systemd.exec(5): "C-style escapes for special
    characters as well as the usual %-specifiers are resolved", so \\ and % are doubled; "leading and
    trailing whitespace ... is removed" and an empty line clears the buffer, so empty lines are left
    out and the files that travel this way have no outer blanks)."""
    lines = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line != line.strip() or line.endswith("\\"):
            # systemd strips both ends, and a unit line ending in \ continues on the next one.
            raise ValueError(f"a line with outer blanks or a final backslash cannot travel as StandardInputText: {line!r}")
        lines.append("StandardInputText=" + line.replace("\\", "\\\\").replace("%", "%%"))
    return "\n".join(lines)


def collector_config(namespace: str) -> str:
    """vm/collector.json for this stack, as one JSON line (JSON is YAML; one line keeps it whole
    through StandardInputText=, which strips leading blanks)."""
    text = COLLECTOR_CONFIG.read_text()
    keep = "|".join(KEEP_METRICS)
    for key, value in {"METRICS_PORT": str(METRICS_PORT), "KEEP": keep, "NAMESPACE": namespace}.items():
        text = text.replace(f"@{key}@", value)
    return json.dumps(json.loads(text), separators=(",", ":"))


def unit_files(settings: Settings, inputs: RuntimeInputs) -> dict[str, str]:
    """The systemd units the VM runs, by unit name (without .service)."""
    return units_for_config(vm_config(settings, inputs))


def units_for_config(config: dict[str, str]) -> dict[str, str]:
    """Units from the rendered convex-gcp-config, so the two can never disagree."""
    mode = config["CONNECTION_MODE"]
    units = {
        "convex-backend": render_unit("convex-backend", {
            "API_PORT": str(API_PORT),
            "SITE_PORT": str(SITE_PORT),
            "BACKEND_IMAGE": config["BACKEND_IMAGE"],
            # Requires=: an explicit restart of the proxy restarts the backend too (systemd.unit(5)).
            "PROXY_DEPENDENCY": "After=cloudsql-proxy.service\nRequires=cloudsql-proxy.service" if mode == "proxy" else "",
            "BACKEND_MOUNTS": f"--mount type=bind,source={{{{STATE_DIR}}}}/sql-ca.pem,target={SQL_CA_FILE},readonly " if mode == "ssl" else "",
        }),
    }
    if mode == "proxy":
        units["cloudsql-proxy"] = render_unit("cloudsql-proxy", {
            "PROXY_IP": config["PROXY_IP"],
            "PROXY_HEALTH_PORT": str(PROXY_HEALTH_PORT),
            "PROXY_IMAGE": config["PROXY_IMAGE"],
            "PROXY_ARGS": config["PROXY_ARGS"],
        })
    if config.get("DASHBOARD_ENABLED") == "true":
        units["convex-dashboard"] = render_unit("convex-dashboard", {
            "DASHBOARD_PORT": str(DASHBOARD_PORT),
            "DASHBOARD_IMAGE": config["DASHBOARD_IMAGE"],
        })
    if config.get("EXPORT_BUCKET"):
        export = {"EXPORT_BUCKET": config["EXPORT_BUCKET"], "EXPORT_INTERVAL_S": config["EXPORT_INTERVAL_S"],
                  "EXPORT_INCLUDE_STORAGE": config["EXPORT_INCLUDE_STORAGE"], "EXPORT_METRIC": config["EXPORT_METRIC"],
                  "ADMIN_KEY_SECRET_ID": config["ADMIN_KEY_SECRET_ID"]}
        units["convex-export"] = render_unit("convex-export", export)
        units["convex-export-timer"] = render_unit("convex-export-timer", export)
    if config.get("METRICS_ENABLED") == "true":
        script = METRICS_SCRIPT.read_text().replace("http://127.0.0.1:3210/metrics", f"http://127.0.0.1:{API_PORT}/metrics")
        units["convex-metrics"] = render_unit("convex-metrics", {
            "METRICS_PORT": str(METRICS_PORT),
            "SCRIPT": standard_input_text(script),
        })
        units["convex-collector"] = render_unit("convex-collector", {
            "COLLECTOR_IMAGE": config["COLLECTOR_IMAGE"],
            "CONFIG": standard_input_text(collector_config(config["METRICS_NAMESPACE"])),
        })
    # The upgrade guard (vm/convex-upgrade.sh): migration progress, rollback, unused images.
    units["convex-upgrade"] = render_unit("convex-upgrade", {})
    return units


def health_cloud_config() -> str:
    """cloud-init user-data that installs the health endpoint (vm/health/) on every boot: COS applies
    cloud-init at creation and at each restart, and /etc is a tmpfs (COS docs, "Disks and file system
    overview"). COS's host firewall admits only SSH (COS docs, "Configuring the host firewall"), so the
    port is opened here; the VPC firewall admits only Google's health checkers to it."""
    import yaml

    def unit(name: str) -> str:
        text = (HEALTH_DIR / name).read_text()
        return text.replace("@HEALTH_PORT@", str(HEALTH_PORT)).replace("@HEALTH_SCRIPT@", HEALTH_SCRIPT)

    rule = f"INPUT -p tcp --dport {HEALTH_PORT} -j ACCEPT"
    config = {
        "write_files": [
            {"path": "/etc/systemd/system/convex-health.socket", "permissions": "0644", "owner": "root", "content": unit("convex-health.socket")},
            {"path": "/etc/systemd/system/convex-health@.service", "permissions": "0644", "owner": "root", "content": unit("convex-health@.service")},
            {"path": HEALTH_SCRIPT, "permissions": "0755", "owner": "root", "content": (HEALTH_DIR / "health.sh").read_text()},
        ],
        "runcmd": [
            f"iptables -w -C {rule} 2>/dev/null || iptables -w -A {rule}",
            "systemctl daemon-reload",
            "systemctl start convex-health.socket",
        ],
    }
    class Literal(yaml.SafeDumper):
        pass

    # Files as literal blocks, so a preview diff of user-data reads like the files themselves.
    Literal.add_representer(str, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|" if "\n" in v else None))
    return "#cloud-config\n" + yaml.dump(config, Dumper=Literal, sort_keys=False, width=1000)


def script_files() -> dict[str, str]:
    """The scripts the units run, by name (vm/<name>.sh)."""
    return {name: (SCRIPT_DIR / f"{name}.sh").read_text() for name in SCRIPTS}


def instance_metadata(settings: Settings, inputs: RuntimeInputs, startup_script: str) -> dict[str, str]:
    metadata = {
        "startup-script": startup_script,
        "user-data": health_cloud_config(),
        # Explicit, not the project's default: the interactive serial console bypasses OS Login's IAM.
        "serial-port-enable": "FALSE",
        "enable-oslogin": "TRUE",
        "block-project-ssh-keys": "TRUE",
        "google-logging-enabled": "true",
        "google-monitoring-enabled": "true",
        "convex-gcp-config": render_env(vm_config(settings, inputs)),
        "convex-backend-env": render_env(backend_env(settings, inputs)),
        "convex-gcp-isolate": ISOLATE_SCRIPT.read_text(),
    }
    if settings.iam_auth:
        metadata["convex-gcp-db-grants"] = db_grants.execute_sql_body(inputs.database_user, settings.database_name)
    for name, text in unit_files(settings, inputs).items():
        metadata[f"convex-gcp-unit-{name}"] = text
    if "convex-gcp-unit-convex-export" in metadata:
        metadata["convex-gcp-export-script"] = EXPORT_SCRIPT.read_text()
    for name, text in script_files().items():
        metadata[f"convex-gcp-script-{name}"] = text
    dashboard = dashboard_env(settings, inputs)
    if dashboard:
        metadata["convex-dashboard-env"] = render_env(dashboard)
    return metadata
