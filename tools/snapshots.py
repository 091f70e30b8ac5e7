"""Convex snapshot exports and imports over the HTTP calls the pinned CLI makes (`npx convex export` and
`npx convex import --replace-all`), for tools/restore.py and tools/restore_drill.py.

Import (get-convex/convex-backend 652b828, npm-packages/convex/src/cli/lib/convexImport.ts uploadForImport /
confirmImport / waitForStableImportState; routes in crates/local_backend/src/router.rs import_routes, handlers in
src/snapshot_import.rs): POST /api/import/start_upload -> {"uploadToken"}; POST /api/import/upload_part?uploadToken
&partNumber per 5 MiB part -> a part token; POST /api/import/finish_upload {"import": {"format": "zip", "mode":
"replaceAll"}, "uploadToken", "partTokens"} -> {"importId"}; the import's state from `_system/cli/queryImport` over
POST /api/query until `waiting_for_confirmation`, then POST /api/perform_import {"importId"}, then until `completed`
or `failed`. Export: the routes vm/convex-export.sh uses (npm-packages/convex/src/cli/lib/convexExport.ts).
Every call carries "Authorization: Convex <admin key>".
"""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

CHUNK = 5 * 1024 * 1024  # the CLI's DEFAULT_CHUNK_SIZE: the backend's minimum part size but for the last
IMPORT_QUERY = "_system/cli/queryImport"


class RestoreError(Exception):
    """Refused or failed; the message says what and what to do."""


# ----------------------------------------------------------------------------------------- HTTP


@dataclass
class Deployment:
    url: str
    admin_key: str
    timeout: float = 60

    def call(self, method: str, path: str, body: Optional[bytes] = None, content_type: str = "application/json") -> tuple[int, bytes]:
        request = urllib.request.Request(self.url.rstrip("/") + path, data=body, method=method, headers={
            "Authorization": f"Convex {self.admin_key}", "Content-Type": content_type, "Convex-Client": "convex-gcp-restore"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except (urllib.error.URLError, OSError) as error:
            raise RestoreError(f"{self.url} did not answer {method} {path.split('?')[0]}: {error}") from None

    def json(self, method: str, path: str, body: Any = None, raw: Optional[bytes] = None, content_type: str = "application/json") -> Any:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        status, text = self.call(method, path, data, content_type)
        if status != 200:
            raise RestoreError(f"{method} {path.split('?')[0]} answered HTTP {status}: {text.decode(errors='replace')[:500]}")
        return json.loads(text) if text.strip() else None

    def query(self, path: str, args: Optional[dict] = None) -> Any:
        """A (system) query over POST /api/query, format json (int64 as strings: crates/value/src/export.rs)."""
        body = self.json("POST", "/api/query", {"path": path, "args": args or {}, "format": "json"})
        if body.get("status") != "success":
            raise RestoreError(f"query {path} failed: {body.get('errorMessage')}")
        return body["value"]

    def mutation(self, path: str, args: dict) -> Any:
        body = self.json("POST", "/api/mutation", {"path": path, "args": args, "format": "json"})
        if body.get("status") != "success":
            raise RestoreError(f"mutation {path} failed: {body.get('errorMessage')}")
        return body["value"]


# ----------------------------------------------------------------------------------------- what is there


@dataclass
class Contents:
    tables: dict[str, int] = field(default_factory=dict)  # user table -> documents
    files: int = 0

    @property
    def documents(self) -> int:
        return sum(self.tables.values())

    @property
    def empty(self) -> bool:
        return self.documents == 0 and self.files == 0

    def describe(self) -> str:
        tables = ", ".join(f"{name} ({count})" for name, count in sorted(self.tables.items())) or "no tables"
        return f"{self.documents} document(s) in {tables}; {self.files} file(s)"


def deployment_contents(deployment: Deployment) -> Contents:
    tables = [row["name"] for row in deployment.query("_system/cli/tables", {"paginationOpts": {"numItems": 1000, "cursor": None}})["page"]]
    return Contents({name: int(deployment.query("_system/cli/tableSize", {"tableName": name})) for name in tables},
                    int(deployment.query("_system/frontend/fileStorageV2:numFiles", {})))


def export_contents(path: Path) -> Contents:
    """Open the archive as the import will (a damaged or truncated file fails here, before anything is sent)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "README.md" not in names:
                raise RestoreError(f"{path} is a zip but not a Convex snapshot export (no README.md)")
            tables = {name[: -len("/documents.jsonl")]: sum(1 for line in archive.read(name).splitlines() if line.strip())
                      for name in names if name.endswith("/documents.jsonl") and not name.startswith("_")}
            files = sum(1 for line in archive.read("_storage/documents.jsonl").splitlines() if line.strip()) if "_storage/documents.jsonl" in names else 0
            bad = archive.testzip()
            if bad:
                raise RestoreError(f"{path}: entry {bad} fails its CRC check; the export is damaged")
    except zipfile.BadZipFile as error:
        raise RestoreError(f"{path} is not a complete zip archive ({error}); a truncated download or a damaged export") from None
    return Contents(tables, files)


# ----------------------------------------------------------------------------------------- import


def wait_import(deployment: Deployment, import_id: str, until: tuple[str, ...], timeout: float, poll: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        doc = deployment.query(IMPORT_QUERY, {"importId": import_id})
        state = (doc or {}).get("state", {})
        if state.get("state") in until or state.get("state") == "failed":
            return state
        if time.monotonic() > deadline:
            raise RestoreError(f"import {import_id} still {state.get('state')} after {timeout:g} s (it goes on in the backend)")
        time.sleep(poll)


def import_zip(deployment: Deployment, path: Path, mode: str = "replaceAll", timeout: float = 3600, poll: float = 1.0,
               say: Callable[[str], None] = print) -> int:
    """Upload and import a snapshot zip; returns the documents written."""
    token = deployment.json("POST", "/api/import/start_upload")["uploadToken"]
    parts = []
    with open(path, "rb") as handle:
        number = 1
        while True:
            chunk = handle.read(CHUNK)
            if not chunk and number > 1:
                break
            parts.append(deployment.json("POST", f"/api/import/upload_part?uploadToken={urllib.request.quote(token)}&partNumber={number}",
                                         raw=chunk, content_type="application/octet-stream"))
            number += 1
            if len(chunk) < CHUNK:
                break
    import_id = deployment.json("POST", "/api/import/finish_upload", {"import": {"format": "zip", "mode": mode}, "uploadToken": token,
                                                                      "partTokens": parts})["importId"]
    state = wait_import(deployment, import_id, ("waiting_for_confirmation", "completed"), timeout, poll)
    if state["state"] == "waiting_for_confirmation":
        if state.get("message_to_confirm"):
            say(state["message_to_confirm"])
        deployment.json("POST", "/api/perform_import", {"importId": import_id})
        state = wait_import(deployment, import_id, ("completed",), timeout, poll)
    if state["state"] == "failed":
        raise RestoreError(f"the backend failed the import: {state.get('error_message')}")
    return int(state.get("num_rows_written", 0))


@dataclass
class Restored:
    documents: int
    seconds: float


def restore(deployment: Deployment, path: Path, force: bool = False, say: Callable[[str], None] = print, poll: float = 1.0,
            confirm: Callable[[], bool] = lambda: True) -> Restored:
    """Print the plan, refuse a deployment with data unless forced, then import with replaceAll."""
    start = time.monotonic()
    incoming = export_contents(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    present = deployment_contents(deployment)
    say(f"Restore {path} ({path.stat().st_size} bytes, sha256 {digest.hexdigest()[:16]}…): {incoming.describe()}")
    say(f"into {deployment.url}, which now holds {present.describe()}.")
    say("Semantics of `npx convex import --replace-all`: every table and the file storage become the export's; "
        "tables the export lacks are deleted.")
    if not present.empty and not force:
        raise RestoreError(f"{deployment.url} holds data ({present.describe()}): refusing to replace it. "
                           "Rerun with --force to replace everything with the export")
    if not confirm():
        raise RestoreError("not confirmed: nothing was changed")
    written = import_zip(deployment, path, "replaceAll", poll=poll, say=say)
    seconds = round(time.monotonic() - start, 3)
    say(f"Restored: {written} document(s) and file(s) written in {seconds} s.")
    return Restored(written, seconds)


# ----------------------------------------------------------------------------------------- export (drill)


def export(deployment: Deployment, dest: Path, include_storage: bool = True, timeout: float = 3600, poll: float = 1.0) -> int:
    """A snapshot export over the routes the VM's timer uses (vm/convex-export.sh); returns its start_ts (ns)."""
    requested = time.time_ns()
    status, text = deployment.call("POST", f"/api/export/request/zip?includeStorage={'true' if include_storage else 'false'}")
    if status != 200 and b"ExportInProgress" not in text:
        raise RestoreError(f"export request answered HTTP {status}: {text.decode(errors='replace')[:300]}")
    deadline = time.monotonic() + timeout
    while True:
        latest = deployment.query("_system/cli/exports:getLatest") or {}
        if latest.get("state") == "completed":
            break
        if latest.get("state") in ("failed", "canceled") or time.monotonic() > deadline:
            raise RestoreError(f"the export ended {latest.get('state')}")
        time.sleep(poll)
    start_ts = int(latest["start_ts"])
    if start_ts < requested - 300 * 10**9:
        raise RestoreError("the newest completed export predates the request")
    request = urllib.request.Request(f"{deployment.url.rstrip('/')}/api/export/zip/{start_ts}", headers={"Authorization": f"Convex {deployment.admin_key}"})
    try:
        with urllib.request.urlopen(request, timeout=deployment.timeout) as response, open(dest, "wb") as out:
            expected = int(response.headers.get("Content-Length", -1))
            shutil.copyfileobj(response, out, CHUNK)
            got = out.tell()
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise RestoreError(f"export download failed: {error}") from None
    # read(amt) returns b"" when the connection closes early (CPython http.client): count the bytes.
    if expected >= 0 and got != expected:
        raise RestoreError(f"export download failed: {got} of {expected} bytes (cut short)")
    return start_ts


def empty_export(tables: list[str], dest: Path) -> None:
    """An export with the given tables empty and no files: importing it with replaceAll is a wipe."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("README.md", "# Empty snapshot (tools/restore.py drill)\n")
        for table in tables:
            archive.writestr(f"{table}/documents.jsonl", "")
        archive.writestr("_storage/documents.jsonl", "")
