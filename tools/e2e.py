"""End-to-end check of a deployed stack with a real Convex app (examples/app): deploy it with
`npx convex deploy`, write a row with the mutation, read it back through the query and the HTTP
action, and find it in Postgres' `documents` table. The same script for every stack.

    python -m tools.e2e local                           # outputs from `pulumi stack output`
    python -m tools.e2e dev --outputs out.json --database-url postgresql://...
    python -m tools.e2e dev --admin-key-env MY_KEY      # the admin key in $MY_KEY

The admin key comes from the variable --admin-key-env names (default CONVEX_SELF_HOSTED_ADMIN_KEY),
else the stack's `admin_key_command` (local), else Secret Manager (`admin_key_secret`, via gcloud).
Needs Node.js (npm, npx), and pulumi without --outputs, gcloud for a key from Secret Manager. The database URL comes from
--database-url / E2E_DATABASE_URL, else the local stack's secret `postgres_url` output; on a GCP
stack tools/acceptance.py opens a tunnel through the VM and passes it. Prints a JSON report;
exit status 1 when a step fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from tools import clis

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "examples" / "app"
# The npm `convex` release cut from each backend release commit (npm-packages/convex/package.json at
# that commit). A CLI newer than the backend can 404 (get-convex/convex-backend#258).
CLI_FOR_BACKEND = {
    "652b828b5129e6cdbcaa3c20efa8d116d09ff3bf": "1.45.0",
    "5f66740ae8dd506577d27294adc55b81e4fbe91b": "1.32.0",
}
MUTATION, QUERY, HTTP_ROUTE = "messages:send", "messages:byMarker", "/messages"


class E2EError(Exception):
    """A step failed; the message says what was expected and what came back."""


@dataclass
class Report:
    stack: str
    steps: dict[str, float] = field(default_factory=dict)
    marker: str = ""
    error: str = ""

    def timed(self, name: str, call: Callable[[], Any]) -> Any:
        start = time.monotonic()
        try:
            return call()
        finally:
            self.steps[name] = round(time.monotonic() - start, 3)


def load_outputs(stack: str, path: Optional[str]) -> dict[str, Any]:
    if path:
        try:
            return json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise E2EError(f"cannot read the outputs {path}: {error}") from None
    result = subprocess.run(["pulumi", "stack", "output", "--json", "--show-secrets", "--stack", stack], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise E2EError(f"pulumi stack output failed: {result.stderr.strip()}")
    return json.loads(result.stdout)


ADMIN_KEY_ENV = "CONVEX_SELF_HOSTED_ADMIN_KEY"


def needed_clis(outputs_file: Optional[str]) -> list[str]:
    """What a run needs on PATH before its first step (the Secret Manager read is checked when it comes)."""
    return ["node", "npm", "npx"] + ([] if outputs_file else ["pulumi"])


def admin_key(outputs: dict[str, Any], env_name: str = ADMIN_KEY_ENV) -> str:
    key = os.environ.get(env_name, "")
    if key:
        return key
    if outputs.get("admin_key_command"):
        command = shlex.split(outputs["admin_key_command"])
    elif outputs.get("admin_key_secret"):
        command = ["gcloud", "secrets", "versions", "access", "latest", f"--secret={outputs['admin_key_secret']}"]
    else:
        raise E2EError(f"no admin key: set {env_name}, or use a stack exporting admin_key_command or admin_key_secret")
    clis.check("tools.e2e", command[:1])
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    # generate_admin_key.sh prints "Admin key:" on stderr and the key alone on stdout (crates/keybroker/src/bin/generate_key.rs).
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not lines:
        raise E2EError(f"{command[0]} could not print the admin key (exit {result.returncode}): {result.stderr.strip()[-500:]}")
    return lines[-1]


def http_json(method: str, url: str, body: Optional[dict] = None, timeout: float = 30) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode(errors="replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def wait_for_version(convex_url: str, timeout: float) -> str:
    """GET /version answers only once the backend reached Postgres (FACTS.md)."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            with urllib.request.urlopen(f"{convex_url}/version", timeout=10) as response:
                if response.status == 200:
                    return response.read().decode().strip()
                last = f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as error:
            last = str(error)
        left = deadline - time.monotonic()
        if left <= 0:
            raise E2EError(f"{convex_url}/version did not answer 200 within {timeout:g} s: {last}")
        time.sleep(min(2, left))  # one last try at the deadline, not 2 s past it


def deploy(app: Path, convex_url: str, key: str, timeout: float) -> None:
    """npm ci from the lockfile, then `npx convex deploy` against the self-hosted backend, in a copy of the app."""
    with tempfile.TemporaryDirectory(prefix="convex-e2e-app-") as tmp:
        work = Path(tmp) / "app"
        shutil.copytree(app, work, ignore=shutil.ignore_patterns("node_modules", "_generated"))
        env = {**os.environ, "CONVEX_SELF_HOSTED_URL": convex_url, "CONVEX_SELF_HOSTED_ADMIN_KEY": key}
        env.pop("CONVEX_DEPLOYMENT", None)  # would point the CLI at Convex Cloud instead
        for command in (["npm", "ci", "--no-audit", "--no-fund"], ["npx", "--no-install", "convex", "deploy", "--yes", "--typecheck", "disable"]):
            result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
            if result.returncode != 0:
                output = (result.stdout + result.stderr).replace(key, "[admin key]")
                raise E2EError(f"`{' '.join(command)}` failed (exit {result.returncode}):\n{output.strip()[-3000:]}")


def call_function(convex_url: str, kind: str, path: str, args: dict) -> Any:
    """POST /api/query|mutation {path, args, format: json} (Convex HTTP API, docs/http-api)."""
    status, body = http_json("POST", f"{convex_url}/api/{kind}", {"path": path, "args": args, "format": "json"})
    if status != 200 or not isinstance(body, dict) or body.get("status") != "success":
        message = body.get("errorMessage") if isinstance(body, dict) else body
        raise E2EError(f"{kind} {path} failed: HTTP {status}: {str(message)[:500]}")
    return body["value"]


def check_rows(rows: Any, marker: str, body: str, via: str) -> None:
    if not isinstance(rows, list) or len(rows) != 1 or rows[0].get("body") != body or rows[0].get("marker") != marker:
        raise E2EError(f"{via} returned {json.dumps(rows)[:500]}, expected one row with marker {marker!r} and body {body!r}")


def check_postgres(database_url: str, marker: str) -> int:
    """The row is in the Convex database's `documents` table: json_value is the document's JSON as
    BYTEA, `deleted` false for a live revision (crates/postgres/src/sql.rs)."""
    import psycopg

    try:
        with psycopg.connect(database_url, connect_timeout=15) as connection:
            row = connection.execute(
                "SELECT count(*) FROM documents WHERE NOT deleted AND position(%s IN convert_from(json_value, 'UTF8')) > 0",
                (marker,),
            ).fetchone()
    except psycopg.Error as error:
        raise E2EError(f"cannot query documents in Postgres: {' '.join(str(error).split())[:500]}") from None
    count = int(row[0]) if row else 0
    if count != 1:
        raise E2EError(f"expected exactly one live document with marker {marker!r} in the documents table, found {count}")
    return count


def run(stack: str, outputs: dict[str, Any], database_url: str, app: Path = APP, timeout: float = 600,
        admin_key_env: str = ADMIN_KEY_ENV) -> Report:
    report = Report(stack)
    try:
        convex_url, site_url = outputs["convex_url"], outputs["convex_site_url"]
        report.timed("version", lambda: wait_for_version(convex_url, timeout))
        key = report.timed("admin_key", lambda: admin_key(outputs, admin_key_env))
        report.timed("deploy", lambda: deploy(app, convex_url, key, timeout))
        marker, body = f"e2e-{uuid.uuid4().hex}", f"hello from {stack}"
        report.marker = marker
        report.timed("mutation", lambda: call_function(convex_url, "mutation", MUTATION, {"marker": marker, "body": body}))
        check_rows(report.timed("query", lambda: call_function(convex_url, "query", QUERY, {"marker": marker})), marker, body, "the query")

        def http_action() -> Any:
            status, rows = http_json("GET", f"{site_url}{HTTP_ROUTE}?marker={marker}")
            if status != 200:
                raise E2EError(f"GET {site_url}{HTTP_ROUTE} answered HTTP {status}: {str(rows)[:300]}")
            return rows

        check_rows(report.timed("http_action", http_action), marker, body, "the HTTP action")
        if not database_url:
            raise E2EError("no database URL to check the documents table: pass --database-url (tools/acceptance.py opens one for GCP stacks)")
        report.timed("postgres", lambda: check_postgres(database_url, marker))
    except KeyError as error:
        report.error = f"the stack exports no {error.args[0]!r}"
    except E2EError as error:
        report.error = str(error)
    return report


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.e2e", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stack")
    parser.add_argument("--outputs", help="`pulumi stack output --json --show-secrets` saved earlier")
    parser.add_argument("--database-url", default=os.environ.get("E2E_DATABASE_URL", ""), help="the Convex database, reachable from here")
    parser.add_argument("--app", default=str(APP))
    parser.add_argument("--timeout", type=float, default=600, help="seconds for /version and for each deploy command")
    parser.add_argument("--admin-key-env", default=ADMIN_KEY_ENV, metavar="NAME",
                        help=f"the environment variable holding the admin key (default {ADMIN_KEY_ENV})")
    options = parser.parse_args(argv)
    clis.require("tools.e2e", needed_clis(options.outputs))
    try:
        outputs = load_outputs(options.stack, options.outputs)
    except E2EError as error:
        print(json.dumps({"stack": options.stack, "error": str(error)}))
        return 1
    database_url = options.database_url or outputs.get("postgres_url", "")
    try:
        report = run(options.stack, outputs, database_url, Path(options.app), options.timeout, options.admin_key_env)
    except clis.MissingCli as error:
        clis.fail(error)
    print(json.dumps(report.__dict__, indent=1))
    return 1 if report.error else 0


if __name__ == "__main__":
    sys.exit(main())
