"""The fake Convex backend's and Auth Proxy's life in time: what a container prints, when it answers.

A container started by the fake docker gets a timeline (absolute times) at `docker run`; the fake
docker, journalctl and the health server read it lazily, so nothing runs in the background.

Copied from get-convex/convex-backend at the pinned commit 652b828b5129e6cdbcaa3c20efa8d116d09ff3bf
(https://github.com/get-convex/convex-backend/blob/652b828b5129e6cdbcaa3c20efa8d116d09ff3bf/crates/local_backend/src/main.rs, https://github.com/get-convex/convex-backend/blob/652b828b5129e6cdbcaa3c20efa8d116d09ff3bf/crates/model/src/migrations.rs,
https://github.com/get-convex/convex-backend/blob/652b828b5129e6cdbcaa3c20efa8d116d09ff3bf/crates/migrations_model/src/lib.rs):
- crates/local_backend/src/main.rs `main`: `tracing::info!("Starting a Convex backend")` first; then
  `run_server_inner` awaits `connect_persistence(...)?` before it binds the HTTP port, so `/version`
  answers only once the database is connected, and a failed connection ends the process (exit != 0).
- crates/cmd_util/src/env.rs `config_service`: stdout, `LOG_FORMAT=json` is tracing-subscriber's JSON
  format (`{"timestamp","level","fields":{"message"},"target"}`).
- crates/model/src/migrations.rs `MigrationWorker::go` / `attempt_migrations`, spawned in the background
  by crates/application/src/lib.rs (`runtime.spawn("migration_worker", ...)`), so migrations run while
  `/version` already answers: "Attempting migration", per step "Migrating to {v}", then
  crates/migrations_model/src/lib.rs `perform_migration`'s WARN "Executing Migration {v}/{DATABASE_VERSION}.
  Wait for log line 'Migrated {v}'" (the criterion's Display; the upgrade guide's
  "MigrationComplete(115)" is the older Debug form), "Migrated {v}", and at the end "db metadata
  version up to date at {DATABASE_VERSION}" (or WARN "persisted db metadata version is ahead at {x},
  this binary is at {y}" for an older binary on a newer database) and "Migration complete".
- DATABASE_VERSION is 128 at that commit (crates/migrations_model/src/lib.rs).
The Auth Proxy (GoogleCloudPlatform/cloud-sql-proxy cmd/root.go,
https://github.com/GoogleCloudPlatform/cloud-sql-proxy/blob/main/cmd/root.go) logs "The proxy has started
successfully and is ready for new connections!" once it listens; /readiness answers 200 from then on.
"""

from __future__ import annotations

import json
import time

DATABASE_VERSION = 128
PROXY_READY_LINE = "The proxy has started successfully and is ready for new connections!"

# How long the fakes take (seconds), as knobs in docker.json "convex"; the real backend takes seconds
# to connect and bind, the proxy about a second; scaled down, but never instant.
DEFAULTS = {
    "backend_start_s": 0.15,  # start to /version answering (database connected, HTTP bound)
    "proxy_start_s": 0.05,  # start to /readiness answering
    "migration_s": 0.05,  # one migration step
    "versions": {},  # image -> its DATABASE_VERSION (default DATABASE_VERSION)
    "crash": {},  # image -> "start" (exits before it connects) | "migration" (exits in its first migration)
    "db_version": None,  # the database's persisted version; None: a database no backend has used yet
}


def knobs(st: dict) -> dict:
    conv = st.setdefault("convex", {})
    for key, value in DEFAULTS.items():
        conv.setdefault(key, json.loads(json.dumps(value)))
    return conv


def line(level: str, target: str, message: str, t: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"
    return json.dumps({"timestamp": stamp, "level": level, "fields": {"message": message}, "target": target})


def backend_timeline(st: dict, image: str, start: float, database_reachable: bool) -> dict:
    """events: [t, text, db_version_or_None]; ready_at: when /version answers; exit_at: when it exits."""
    conv = knobs(st)
    events: list[list] = [[start, line("INFO", "local_backend", "Starting a Convex backend", start), None]]
    crash = conv["crash"].get(image)
    t = start + conv["backend_start_s"]
    if not database_reachable:
        # connect_persistence keeps trying (connect_timeout=30 in POSTGRES_URL): it answers once the
        # database is back, its start time after that (ready() with the state's sql_up_at).
        return {"events": events, "ready_at": None, "exit_at": None, "waits_for_db": True}
    if crash == "start":
        t = start + conv["backend_start_s"] / 2
        events.append([t, line("ERROR", "local_backend", "Error: this image fails at start (fake)", t), None])
        return {"events": events, "ready_at": None, "exit_at": t}
    ready_at = t
    target = int(conv["versions"].get(image, DATABASE_VERSION))
    persisted = conv["db_version"]
    events.append([t, line("INFO", "model::migrations", "Attempting migration", t), None])
    if persisted is None:
        persisted = target  # a new database is initialised at the binary's version
        events.append([t, "", target])
    step = conv["migration_s"]
    exit_at = None
    for v in range(int(persisted) + 1, target + 1):
        events.append([t, line("INFO", "model::migrations", f"Migrating to {v}", t), None])
        t += step
        events.append([t, line("WARN", "migrations_model",
                               f"Executing Migration {v}/{target}. Wait for log line 'Migrated {v}'", t), None])
        if crash == "migration":
            exit_at = t + step / 2
            events.append([exit_at, line("ERROR", "local_backend", "Error: this image fails in a migration (fake)", exit_at), None])
            return {"events": events, "ready_at": None, "exit_at": exit_at}
        events.append([t, line("INFO", "model::migrations", f"Migrated {v}", t), v])
    if int(persisted) > target:
        events.append([t, line("WARN", "model::migrations",
                               f"persisted db metadata version is ahead at {persisted}, this binary is at {target}", t), None])
    else:
        events.append([t, line("INFO", "model::migrations", f"db metadata version up to date at {target}", t), None])
    events.append([t, line("INFO", "model::migrations", "Migration complete", t), None])
    return {"events": events, "ready_at": ready_at, "exit_at": exit_at}


def proxy_timeline(st: dict, start: float) -> dict:
    t = start + knobs(st)["proxy_start_s"]
    return {"events": [[t, json.dumps({"severity": "INFO", "message": PROXY_READY_LINE}), None]],
            "ready_at": t, "exit_at": None}


def alive(c: dict, now: float) -> bool:
    return c["status"] == "running" and (c.get("exit_at") is None or now < c["exit_at"])


def ready(c: dict | None, now: float, st: dict | None = None) -> bool:
    """Whether the container answers its health endpoint now (no timeline: at once, as before)."""
    if not c or not alive(c, now):
        return False
    if c.get("waits_for_db") and st is not None and st.get("sql_reachable", True):
        return now >= st.get("sql_up_at", 0) + knobs(st)["backend_start_s"]
    if "ready_at" not in c:
        return True
    return c["ready_at"] is not None and now >= c["ready_at"]


def printed(events: list, since: float, until: float) -> list[str]:
    return [text for t, text, _ in events if text and since <= t <= until]
