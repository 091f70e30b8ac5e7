#!/usr/bin/env python3
"""Stand-in for ghcr.io/get-convex/convex-backend in the host tier (tests/host): what the VM's boot path
sees of the real backend, built on Debian's python3 and postgresql-client.

Copied from get-convex/convex-backend at 94a42c3 (2026-08-22):
- "Starting a Convex backend" first (crates/local_backend/src/main.rs:63); it binds the API port only
  after Postgres connected (FACTS.md); "{service} listening on {addr}" (crates/common/src/http/mod.rs:580).
- Migrations run in a background worker (crates/application/src/lib.rs:927 spawns migration_worker) that
  logs "Attempting migration", "Migrating to N", "Migrated N", "db metadata version up to date at N" and
  "Migration complete" (crates/model/src/migrations.rs); DATABASE_VERSION 128
  (crates/migrations_model/src/lib.rs:36). The version lives in the database, so a rollback to an older
  image finds a newer version there.
- GET /version and GET /metrics are meta routes of every HTTP server (crates/common/src/http/mod.rs
  meta_routes); /metrics is the Prometheus text format of CONVEX_METRICS_REGISTRY, e.g. the histogram
  http_handle_duration_seconds{endpoint,method,status,client_version,is_test} (same file, mod metrics).
- The database is INSTANCE_NAME with '-' as '_' (crates/clusters/src/lib.rs); POSTGRES_URL has no path.
- credentials/instance_secret on the data volume (self-hosted/docker-build/read_credentials.sh) and
  ./generate_admin_key.sh in the working directory print "<instance name>|<hex>".
- LOG_FORMAT=json: one JSON object per line (tracing-subscriber's json format: timestamp, level, fields.message).
- Stops cleanly on SIGINT (self-hosted/docker/docker-compose.yml stop_signal: SIGINT).

Knobs (ENV of a stand-in image variant, so a variant is a new image digest, as a new release is; or, for
a running deployment, /convex/data/standin-knobs.json on the data disk, read at each start):
  CONVEX_STANDIN_START_SECONDS      seconds between the database connection and binding the port (0)
  CONVEX_STANDIN_MODE               ok | crash (exit 1 after the start time) | never (never binds) |
                                    hang (binds, never answers)
  CONVEX_STANDIN_DATABASE_VERSION   the version this "release" migrates the database to (128)
  CONVEX_STANDIN_MIGRATION_SECONDS  time each migration step takes (0)
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

API_PORT, SITE_PORT = 3210, 3211
DATA = "/convex/data"
try:
    with open(f"{DATA}/standin-knobs.json") as _knobs:
        KNOBS = {**os.environ, **json.load(_knobs)}
except FileNotFoundError:
    KNOBS = dict(os.environ)
VERSION = KNOBS.get("CONVEX_STANDIN_VERSION", "standin")
START = float(KNOBS.get("CONVEX_STANDIN_START_SECONDS", "0"))
MODE = KNOBS.get("CONVEX_STANDIN_MODE", "ok")
DB_VERSION = int(KNOBS.get("CONVEX_STANDIN_DATABASE_VERSION", "128"))
MIGRATION_SECONDS = float(KNOBS.get("CONVEX_STANDIN_MIGRATION_SECONDS", "0"))
REQUESTS = {"count": 0}


def log(message: str, level: str = "INFO", target: str = "local_backend") -> None:
    if os.environ.get("LOG_FORMAT") == "json":
        line = json.dumps({"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()), "level": level,
                           "fields": {"message": message}, "target": target})
    else:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())} {level} {target}: {message}"
    print(line, flush=True)


def database_url() -> str:
    url = os.environ.get("POSTGRES_URL", "")
    if not url:
        log("POSTGRES_URL is not set (the stand-in has no SQLite)", "ERROR")
        sys.exit(1)
    parts = urlsplit(url)
    if parts.path not in ("", "/"):
        log("cluster url already contains db name", "ERROR")  # crates/postgres: the URL must not name a database
        sys.exit(1)
    database = os.environ.get("INSTANCE_NAME", "convex-self-hosted").replace("-", "_")
    return parts._replace(path=f"/{database}").geturl()


def psql(sql: str) -> str:
    out = subprocess.run(["psql", database_url(), "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip())
    return out.stdout.strip()


def connect() -> None:
    try:
        psql("CREATE TABLE IF NOT EXISTS persistence_globals (key TEXT PRIMARY KEY, json_value TEXT NOT NULL);"
             "CREATE TABLE IF NOT EXISTS documents (id TEXT PRIMARY KEY, body TEXT NOT NULL);")
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        # The real backend fails its start when Postgres is unreachable; systemd restarts it.
        log(f"Failed to connect to Postgres: {error}", "ERROR", "postgres")
        sys.exit(1)


def persisted_version() -> int:
    value = psql("SELECT json_value FROM persistence_globals WHERE key = 'database_version'")
    if not value:
        psql(f"INSERT INTO persistence_globals VALUES ('database_version', '{DB_VERSION}') ON CONFLICT DO NOTHING")
        return DB_VERSION
    return int(value)


def migrate() -> None:
    log("Attempting migration", target="model::migrations")
    version = persisted_version()
    while version < DB_VERSION:
        log(f"Migrating to {version + 1}", target="model::migrations")
        time.sleep(MIGRATION_SECONDS)
        psql(f"UPDATE persistence_globals SET json_value = '{version + 1}' WHERE key = 'database_version'")
        version += 1
        log(f"Migrated {version}", target="model::migrations")
    if version > DB_VERSION:
        log(f"Database version {version} is newer than this backend's {DB_VERSION}", "ERROR", "model::migrations")
    else:
        log(f"db metadata version up to date at {DB_VERSION}", target="model::migrations")
    log("Migration complete", target="model::migrations")


def credentials() -> None:
    os.makedirs(f"{DATA}/credentials", exist_ok=True)
    os.makedirs(f"{DATA}/storage", exist_ok=True)
    secret = os.environ.get("INSTANCE_SECRET", "")
    with open(f"{DATA}/credentials/instance_secret", "w") as handle:
        handle.write(secret)
    with open(f"{DATA}/credentials/instance_name", "w") as handle:
        handle.write(os.environ.get("INSTANCE_NAME", "convex-self-hosted"))


METRICS = """# HELP http_handle_duration_seconds Time to handle an HTTP request
# TYPE http_handle_duration_seconds histogram
http_handle_duration_seconds_bucket{{endpoint="/version",method="GET",status="200",client_version="",is_test="false",le="0.005"}} {n}
http_handle_duration_seconds_bucket{{endpoint="/version",method="GET",status="200",client_version="",is_test="false",le="+Inf"}} {n}
http_handle_duration_seconds_sum{{endpoint="/version",method="GET",status="200",client_version="",is_test="false"}} {s}
http_handle_duration_seconds_count{{endpoint="/version",method="GET",status="200",client_version="",is_test="false"}} {n}
"""


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if MODE == "hang":
            time.sleep(3600)
            return
        path = self.path.split("?")[0]
        if path == "/version":
            REQUESTS["count"] += 1
            body, ctype, code = VERSION.encode(), "text/plain", 200
        elif path == "/metrics":
            n = REQUESTS["count"]
            body, ctype, code = METRICS.format(n=n, s=n * 0.001).encode(), "text/plain; version=0.0.4", 200
        else:
            body, ctype, code = b"not found", "text/plain", 404
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(port: int, name: str) -> None:
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    log(f"{name} listening on 0.0.0.0:{port}", target="common::http")
    threading.Thread(target=server.serve_forever, daemon=True).start()


def stop(signum, frame):
    log("Received SIGINT: shutting down", target="local_backend")
    sys.exit(0)


def main() -> None:
    signal.signal(signal.SIGINT, stop)
    log("Starting a Convex backend")
    credentials()
    connect()
    time.sleep(START)
    if MODE == "crash":
        log("backend crashed (stand-in CONVEX_STANDIN_MODE=crash)", "ERROR")
        sys.exit(1)
    if MODE != "never":
        serve(API_PORT, "backend")
        serve(SITE_PORT, "site proxy")
        threading.Thread(target=migrate, daemon=True).start()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
