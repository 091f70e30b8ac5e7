"""`convex.env`: Convex's own settings passed to the backend (on the VM and on the local stack), checked
against the variables the pinned backend really reads (convex_env.json, generated from its source at the
pinned commit by `python -m tools.convex_env`), and the first-class keys for the ones worth a name.

A name the backend does not read is refused with the one meant; a name the program sets itself is
refused with the key that sets it, so a value can never silently fight the program's."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Optional

from . import suggest
from .errors import PROJECT, Problem, rm_line, set_line

TABLE = Path(__file__).with_name("convex_env.json")
ENV_PATH = f"{PROJECT}:convex.env"

# Variables the program sets, and the key (or the reason) that decides them.
OWNED: dict[str, str] = {
    "POSTGRES_URL": "connectionMode and database.* (the program builds the URL)",
    "MYSQL_URL": "connectionMode (this program runs Convex on Cloud SQL for PostgreSQL)",
    "DATABASE_URL": "connectionMode and database.* (the program builds POSTGRES_URL)",
    "SQLITE_DB": "connectionMode (Convex runs on PostgreSQL here, never SQLite)",
    "PG_CA_FILE": "connectionMode (ssl mode installs the Cloud SQL CA)",
    "DO_NOT_REQUIRE_SSL": "connectionMode",
    "INSTANCE_NAME": "convex.instanceName",
    "INSTANCE_SECRET": "nothing: the program generates it into Secret Manager",
    "CONVEX_CLOUD_ORIGIN": "domain.apiHost (without a domain: the IAP tunnel's localhost origins)",
    "CONVEX_SITE_ORIGIN": "domain.siteHost (without a domain: the IAP tunnel's localhost origins)",
    "POSTGRES_MAX_CONNECTIONS": "convex.poolSize",
    "RUST_LOG": "convex.logLevel",
    "LOG_FORMAT": "nothing: the program sets json for Cloud Logging",
    "DISABLE_BEACON": "convex.disableBeacon",
    "REDACT_LOGS_TO_CLIENT": "convex.redactLogsToClient",
    "DATA_DIR": "nothing: the data disk is mounted at /convex/data",
    "STORAGE_DIR": "nothing: files stay on the data disk under /convex/data",
    "CREDENTIALS_DIR": "nothing: the instance secret comes from Secret Manager",
    "TMPDIR": "nothing: the image's entrypoint puts it on the data disk",
    # The storage kind is recorded in the database: switching an existing deployment to S3 breaks it (FACTS.md).
    "S3_STORAGE_EXPORTS_BUCKET": "nothing: storage stays on the data disk (the storage kind is recorded in the database)",
    "S3_STORAGE_SNAPSHOT_IMPORTS_BUCKET": "nothing: storage stays on the data disk (the storage kind is recorded in the database)",
    "S3_STORAGE_MODULES_BUCKET": "nothing: storage stays on the data disk (the storage kind is recorded in the database)",
    "S3_STORAGE_FILES_BUCKET": "nothing: storage stays on the data disk (the storage kind is recorded in the database)",
    "S3_STORAGE_SEARCH_BUCKET": "nothing: storage stays on the data disk (the storage kind is recorded in the database)",
}

# First-class keys: (ConvexSettings field, config key) → the variable. Reasons and defaults: docs/configuration.md.
FIRST_CLASS: dict[str, tuple[str, str]] = {
    "DOCUMENT_RETENTION_DELAY": ("document_retention_delay_seconds", "convex.documentRetentionDelaySeconds"),
    "APPLICATION_MAX_CONCURRENT_QUERIES": ("max_concurrent_queries", "convex.maxConcurrentQueries"),
    "APPLICATION_MAX_CONCURRENT_MUTATIONS": ("max_concurrent_mutations", "convex.maxConcurrentMutations"),
    "APPLICATION_MAX_CONCURRENT_V8_ACTIONS": ("max_concurrent_v8_actions", "convex.maxConcurrentV8Actions"),
    "APPLICATION_MAX_CONCURRENT_NODE_ACTIONS": ("max_concurrent_node_actions", "convex.maxConcurrentNodeActions"),
    "V8_ACTION_USER_TIMEOUT_SECS": ("v8_action_timeout_seconds", "convex.v8ActionTimeoutSeconds"),
    "NODE_ACTION_USER_TIMEOUT_SECS": ("node_action_timeout_seconds", "convex.nodeActionTimeoutSeconds"),
}
# Convex's self-hosted docker-compose.yml sets 2 days; the binary's default is 14 (knobs.rs), and
# self-hosted databases then keep every overwritten revision for two weeks.
DEFAULT_DOCUMENT_RETENTION_SECONDS = 2 * 24 * 60 * 60


@functools.lru_cache(maxsize=1)
def table() -> dict[str, Any]:
    return json.loads(TABLE.read_text())


def known() -> dict[str, dict[str, str]]:
    return table()["variables"]


def _source() -> str:
    t = table()
    return f"the variables Convex {t['commit'][:12]} ({t['commit_date'][:10]}) reads, convex_gcp/convex_env.json"


# Names Convex no longer reads, and what replaced them (get-convex/convex-backend a461fb806, 2026-07-02).
RENAMED: dict[str, list[str]] = {"ACTIONS_USER_TIMEOUT_SECS": ["V8_ACTION_USER_TIMEOUT_SECS", "NODE_ACTION_USER_TIMEOUT_SECS"]}


def _moved_to(name: str, path: str, shown: str) -> str:
    """The command that puts the value where `name` belongs: its own key, its owner's key, or convex.env."""
    if name in FIRST_CLASS:
        return set_line(f"{PROJECT}:{FIRST_CLASS[name][1]}", _number(shown))
    if name in OWNED:
        key = OWNED[name].split(" ", 1)[0]
        return set_line(f"{PROJECT}:{key}", shown) if key.startswith(("convex.", "domain.")) else ""
    return set_line(f"{ENV_PATH}.{name}", shown)


def _meaning(name: str) -> str:
    if name in FIRST_CLASS:
        return f"{name} (key {FIRST_CLASS[name][1]})"
    if name in OWNED:
        return f"{name}, which the program sets ({OWNED[name]})"
    return name


def problems(env: dict[str, str]) -> list[Problem]:
    """Every problem of a `convex.env` map, each with its fix."""
    found = []
    names = list(known())
    for name, value in sorted(env.items()):
        path = f"{ENV_PATH}.{name}"
        shown = value if isinstance(value, str) else json.dumps(value)
        if name in FIRST_CLASS:
            key = FIRST_CLASS[name][1]
            found.append(Problem(path, f"{name} has its own key, {key}", f"{PROJECT}:{key}", f"{rm_line(path)} && {_moved_to(name, path, shown)}"))
        elif name in OWNED:
            moved = _moved_to(name, path, shown)
            found.append(Problem(path, f"{name} is set by the program; it is decided by {OWNED[name]}", "a variable the program does not set",
                                 rm_line(path) + (f" && {moved}" if moved else "")))
        elif name not in known():
            candidates = RENAMED.get(name) or suggest.closest(name, names)
            why = f" (replaced by {' and '.join(candidates)})" if name in RENAMED else ""
            meant = suggest.did_you_mean([_meaning(c) for c in candidates]).replace("'", "") if not why else why
            moves = [m for m in (_moved_to(c, path, shown) for c in candidates) if m]
            if len(moves) == 1:
                fix = f"{rm_line(path)} && {moves[0]}"
            elif moves:
                fix = "\n".join([f"{rm_line(path)}, then one of:"] + moves)
            else:
                fix = rm_line(path)
            found.append(Problem(path, f"Convex does not read {name}{meant}", _source(), fix))
        elif "\n" in shown or "\r" in shown:
            found.append(Problem(path, "the value has a line break (the env file takes one line per variable)", "one line", rm_line(path)))
    return found


def _number(text: str) -> Any:
    return int(text) if text.isdigit() else text


def variables(convex: Any) -> dict[str, str]:
    """The backend variables `convex` (ConvexSettings) adds: the first-class keys that are set, then
    `convex.env` as given (validated already)."""
    env: dict[str, str] = {}
    for name, (field, _key) in FIRST_CLASS.items():
        value: Optional[int] = getattr(convex, field)
        if value is not None:
            env[name] = str(value)
    env.update({name: str(value) for name, value in convex.env.items()})
    return env
