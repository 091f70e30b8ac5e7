"""A stand-in Convex deployment for snapshot exports and imports: the routes `npx convex export` and
`npx convex import` call, answered as the pinned backend answers them, over tables and files it holds.

Copied from get-convex/convex-backend @ 652b828 (the pinned release):
- Auth: every route takes "Authorization: Convex <admin key>" (npm-packages/convex/src/cli/lib/utils/utils.ts
  deploymentFetch); errors are {"code", "message"} JSON (crates/common/src/http/mod.rs ResponseErrorMessage).
- Export (crates/local_backend/src/router.rs snapshot_export_routes, src/snapshot_export.rs):
  POST /api/export/request/zip?includeStorage=<bool> -> 200 with no body, or 400 ExportInProgress when one is
  requested or in progress (crates/application/src/lib.rs request_export);
  GET /api/export/zip/<start_ts> -> the zip with Content-Length and "attachment; filename=snapshot_<name>_<ts>.zip",
  404 ExportNotFound, 400 ExportNotComplete (get_zip_export).
- Progress: POST /api/query {"path": "_system/cli/exports:getLatest", "args": {}, "format": "json"} ->
  {"status": "success", "value": <the newest _exports document>} (npm-packages/system-udfs/convex/_system/cli/exports.ts;
  the document: crates/model/src/exports/types.rs SerializedExport, tag "state"; int64 fields as strings in
  the "json" format, crates/value/src/export.rs export_clean).
- The zip (crates/exports/src/zip_uploader.rs, lib.rs, export_storage.rs): README.md first, then
  _tables/documents.jsonl ({"name", "id"}), <table>/documents.jsonl (one document a line),
  _storage/documents.jsonl ({"_id", "_creationTime", "sha256", "size", "contentType", "internalId"},
  FileStorageZipMetadata) and one _storage/<id> entry per file; deflate.
- Import (crates/local_backend/src/snapshot_import.rs, router.rs import_routes): POST /api/import/start_upload ->
  {"uploadToken"}; POST /api/import/upload_part?uploadToken=&partNumber= (the bytes) -> a JSON string;
  POST /api/import/finish_upload {"import": {"format", "mode", ...}, "uploadToken", "partTokens"} -> {"importId"};
  POST /api/perform_import {"importId"}. Progress: _system/cli/queryImport {"importId"} -> the _snapshot_imports
  document whose "state" is SerializedImportState (crates/model/src/snapshot_imports/types.rs): uploaded,
  waiting_for_confirmation {message_to_confirm, require_manual_confirmation}, in_progress, completed
  {num_rows_written}, failed {error_message}. Modes (ImportMode): requireEmpty (default) fails on a non-empty
  table in the import (crates/application/src/snapshot_import/confirmation.rs TableExists), replaceAll
  replaces every user table and the files, deleting tables not in the import (snapshot_import/mod.rs).
- Data checks tools.restore makes: _system/cli/tables (user tables, paginated shape), _system/cli/tableSize
  {tableName}, _system/frontend/fileStorageV2:numFiles (npm-packages/system-udfs/convex/_system/...).
- The app (examples/app, deployed by tools/e2e.py) for the restore drill: messages:send/byMarker and
  files:generateUploadUrl/save/byMarker over POST /api/mutation|/api/query; the upload URL is Convex's
  POST /api/storage/upload?token= -> {"storageId"} and a file is served at GET /api/storage/<id>
  (crates/local_backend/src/storage.rs, router.rs storage_api_routes). Tests may also fill `tables` and
  `files` directly.

Faults: `export_fails` (the export ends `failed`), `export_damaged` (the stored zip is cut short: the
download is complete, the archive is not), `download_cut` (the download stops half-way with the full
Content-Length sent), `polls_per_state` (status polls before the next state).
"""

from __future__ import annotations

import hashlib
import base64
import io
import json
import threading
import time
import uuid
import zipfile
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.serving import JsonHandler, LoopbackFake

README = "# Welcome to your Convex snapshot export!\n\nDocuments for each table are in <table_name>/documents.jsonl files.\n"


def build_zip(tables: dict[str, list[dict]], files: dict[str, tuple[bytes, str]], include_storage: bool) -> bytes:
    """A snapshot export laid out as the pinned backend writes it."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("README.md", README)
        z.writestr("_tables/documents.jsonl", "".join(json.dumps({"name": t, "id": 10001 + i}) + "\n" for i, t in enumerate(sorted(tables))))
        for table in sorted(tables):
            z.writestr(f"{table}/documents.jsonl", "".join(json.dumps(doc) + "\n" for doc in tables[table]))
        if include_storage:
            meta = []
            for fid, (data, ctype) in sorted(files.items()):
                meta.append({"_id": fid, "_creationTime": 1.7e12, "sha256": base64.b64encode(hashlib.sha256(data).digest()).decode(),
                             "size": len(data), "contentType": ctype, "internalId": uuid.uuid5(uuid.NAMESPACE_URL, fid).hex})
            z.writestr("_storage/documents.jsonl", "".join(json.dumps(m) + "\n" for m in meta))
            for fid, (data, _) in sorted(files.items()):
                z.writestr(f"_storage/{fid}", data)
    return out.getvalue()


def read_zip(data: bytes) -> tuple[dict[str, list[dict]], dict[str, tuple[bytes, str]]]:
    """Tables and files of a snapshot zip, as the backend's import parses it (snapshot_import/parse.rs)."""
    tables: dict[str, list[dict]] = {}
    files: dict[str, tuple[bytes, str]] = {}
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = z.namelist()
        storage_meta = {}
        if "_storage/documents.jsonl" in names:
            for line in z.read("_storage/documents.jsonl").decode().splitlines():
                if line.strip():
                    m = json.loads(line)
                    storage_meta[m["_id"]] = m
        for name in names:
            if name.endswith("/documents.jsonl") and not name.startswith("_"):
                table = name[: -len("/documents.jsonl")]
                tables[table] = [json.loads(line) for line in z.read(name).decode().splitlines() if line.strip()]
        for fid, m in storage_meta.items():
            files[fid] = (z.read(f"_storage/{fid}"), m.get("contentType") or "")
    return tables, files


class FakeConvexDeployment(LoopbackFake):
    def __init__(self, admin_key: str, name: str = "convex-dev") -> None:
        self.admin_key, self.name = admin_key, name
        self.tables: dict[str, list[dict]] = {}
        self.files: dict[str, tuple[bytes, str]] = {}
        self.exports: list[dict] = []  # _exports documents, oldest first
        self.stored: dict[int, bytes] = {}  # start_ts -> the export's zip
        self.imports: dict[str, dict] = {}
        self.uploads: dict[str, list[bytes]] = {}
        self.upload_tokens: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        self.export_fails = False
        self.export_damaged = False
        self.download_cut = False
        self.polls_per_state = 1
        self.lock = threading.Lock()
        self._listen(self._handler())

    def has_data(self) -> bool:
        return any(self.tables.values()) or bool(self.files)

    # ------------------------------------------------------------ state machines --
    def _advance_export(self) -> None:
        if not self.exports:
            return
        doc = self.exports[-1]
        doc["_polls"] = doc.get("_polls", 0) + 1
        if doc["_polls"] < self.polls_per_state:
            return
        doc["_polls"] = 0
        if doc["state"] == "requested":
            start = time.time_ns()
            doc.update(state="in_progress", start_ts=str(start), progress_message="Backing up tables")
            # The snapshot is taken at start_ts: later writes are not in it.
            doc["_zip"] = build_zip(self.tables, self.files, doc["format"]["include_storage"])
        elif doc["state"] == "in_progress":
            if self.export_fails:
                doc.update(state="failed", failed_ts=str(time.time_ns()))
                return
            data = doc.pop("_zip")
            if self.export_damaged:
                data = data[: len(data) * 2 // 3]
            start = int(doc["start_ts"])
            self.stored[start] = data
            doc.update(state="completed", complete_ts=str(time.time_ns()), zip_object_key=uuid.uuid4().hex,
                       expiration_ts=str(start + 14 * 86400 * 10**9), size=str(len(data)))
            doc.pop("progress_message", None)

    def _advance_import(self, doc: dict) -> None:
        state = doc["state"]
        doc["_polls"] = doc.get("_polls", 0) + 1
        if doc["_polls"] < self.polls_per_state:
            return
        doc["_polls"] = 0
        if state["state"] == "uploaded":
            tables, files = doc["_parsed"]
            if doc["mode"] == "requireEmpty":
                full = [t for t in tables if self.tables.get(t)] + (["_storage"] if files and self.files else [])
                if full:
                    doc["state"] = {"state": "failed", "error_message": f"Table {full[0]} already exists"}
                    return
            deleted = sum(len(v) for v in self.tables.values()) if doc["mode"] == "replaceAll" else 0
            message = "\n".join(f"{t}: +{len(rows)}" for t, rows in sorted(tables.items()))
            doc["state"] = {"state": "waiting_for_confirmation", "message_to_confirm": f"Import change summary:\n{message}\ndeleting {deleted} documents",
                            "require_manual_confirmation": deleted > 0}
        elif state["state"] == "in_progress":
            tables, files = doc["_parsed"]
            if doc["mode"] == "replaceAll":
                self.tables = {t: list(rows) for t, rows in tables.items()}
                self.files = dict(files)
            else:
                for t, rows in tables.items():
                    self.tables.setdefault(t, []).extend(rows)
                self.files.update(files)
            written = sum(len(rows) for rows in tables.values()) + len(files)
            doc["state"] = {"state": "completed", "timestamp": str(time.time_ns()), "num_rows_written": str(written)}

    # ------------------------------------------------------------------ handler --
    def _handler(self):
        fake = self

        class Handler(JsonHandler):
            def _error(self, status: int, code: str, message: str) -> None:
                self._send(status, {"code": code, "message": message})

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") == f"Convex {fake.admin_key}":
                    return True
                self._error(401, "BadAdminKey", "The provided admin key was invalid for this instance")
                return False

            def do_GET(self):  # noqa: N802
                url = urlsplit(self.path)
                fake.requests.append(("GET", url.path))
                if url.path == "/version":
                    return self._send(200, "unknown", "text/plain")
                if url.path.startswith("/api/storage/"):
                    with fake.lock:
                        found = fake.files.get(url.path.rsplit("/", 1)[1])
                    if found is None:
                        return self._send(404, "File not found", "text/plain")
                    return self._send(200, found[0], found[1] or "application/octet-stream")
                if not url.path.startswith("/api/export/zip/"):
                    return self._send(404, "No matching routes found", "text/plain")
                if not self._authorized():
                    return None
                ts = url.path.rsplit("/", 1)[1]
                if not ts.isdigit():
                    return self._error(400, "BadSnapshotId", "Snapshot Id did not parse to an ID.")
                with fake.lock:
                    data = fake.stored.get(int(ts))
                if data is None:
                    return self._error(404, "ExportNotFound", f"The requested export {ts} was not found")
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Disposition", f"attachment; filename=snapshot_{fake.name}_{ts}.zip")
                self.end_headers()
                if fake.download_cut:
                    self.wfile.write(data[: len(data) // 2])
                    self.close_connection = True
                    return None
                self.wfile.write(data)
                return None

            def do_POST(self):  # noqa: N802
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake.requests.append(("POST", url.path))
                if not url.path.startswith("/api/"):
                    return self._send(404, "No matching routes found", "text/plain")
                if url.path == "/api/storage/upload":
                    # The token in the URL authorizes the upload (no admin key).
                    with fake.lock:
                        if query.get("token") not in fake.upload_tokens:
                            return self._error(400, "InvalidUploadToken", "invalid upload token")
                        fake.upload_tokens.discard(query["token"])
                        fid = "kg" + uuid.uuid4().hex[:30]
                        fake.files[fid] = (raw, self.headers.get("Content-Type", ""))
                    return self._send(200, {"storageId": fid})
                if url.path in ("/api/mutation", "/api/query") and json.loads(raw or b"{}").get("path", "").split(":")[0] in ("messages", "files"):
                    with fake.lock:
                        return self._app(url.path, json.loads(raw))
                if not self._authorized():
                    return None
                with fake.lock:
                    return self._post(url.path, query, raw)

            def _post(self, path: str, query: dict, raw: bytes):
                if path == "/api/export/request/zip":
                    if any(e["state"] in ("requested", "in_progress") for e in fake.exports):
                        return self._error(400, "ExportInProgress", "There is already an export requested or in progress.")
                    include = query.get("includeStorage", "false") == "true"
                    fake.exports.append({"_id": uuid.uuid4().hex, "_creationTime": time.time() * 1000, "state": "requested",
                                         "format": {"format": "zip", "include_storage": include}, "requestor": "snapshotExport",
                                         "expiration_ts": "0"})
                    return self._send(200, b"", "text/plain")
                if path == "/api/import/start_upload":
                    token = uuid.uuid4().hex
                    fake.uploads[token] = []
                    return self._send(200, {"uploadToken": token})
                if path == "/api/import/upload_part":
                    parts = fake.uploads.get(query.get("uploadToken", ""))
                    if parts is None:
                        return self._error(400, "InvalidUploadToken", "unknown upload token")
                    parts.append(raw)
                    return self._send(200, json.dumps(f"part-{query.get('partNumber')}-{len(raw)}"))
                if path == "/api/import/finish_upload":
                    body = json.loads(raw)
                    parts = fake.uploads.pop(body["uploadToken"], None)
                    args = body["import"]
                    if parts is None or len(parts) != len(body["partTokens"]):
                        return self._error(400, "InvalidUploadToken", "parts do not match the upload")
                    if args.get("format") != "zip" or args.get("tableName"):
                        return self._error(400, "InvalidName", "ZIP import cannot have table name")
                    if args.get("mode", "requireEmpty") not in ("append", "replace", "replaceAll", "requireEmpty"):
                        return self._error(400, "BadRequest", f"unknown mode {args.get('mode')}")
                    try:
                        parsed = read_zip(b"".join(parts))
                    except (zipfile.BadZipFile, KeyError, ValueError) as error:
                        return self._error(400, "ImportFailed", f"could not read the zip: {error}")
                    import_id = uuid.uuid4().hex
                    fake.imports[import_id] = {"_id": import_id, "state": {"state": "uploaded"}, "mode": args.get("mode", "requireEmpty"),
                                               "_parsed": parsed}
                    return self._send(200, {"importId": import_id})
                if path == "/api/perform_import":
                    doc = fake.imports.get(json.loads(raw).get("importId", ""))
                    if doc is None or doc["state"]["state"] != "waiting_for_confirmation":
                        return self._error(400, "InvalidImport", "the import is not waiting for confirmation")
                    doc["state"] = {"state": "in_progress", "progress_message": "Importing", "checkpoint_messages": []}
                    return self._send(200, b"", "text/plain")
                if path == "/api/query":
                    return self._query(json.loads(raw))
                return self._send(404, "No matching routes found", "text/plain")

            def _app(self, path: str, body: dict):
                fn, args = body["path"], body.get("args", {})
                rows = fake.tables.setdefault(fn.split(":")[0], [])
                if fn in ("messages:send", "files:save"):
                    doc = {"_id": uuid.uuid4().hex, "_creationTime": time.time() * 1000, **args}
                    rows.append(doc)
                    value: Any = doc["_id"]
                elif fn == "files:generateUploadUrl":
                    token = uuid.uuid4().hex
                    fake.upload_tokens.add(token)
                    value = f"{fake.url}/api/storage/upload?token={token}"
                elif fn in ("messages:byMarker", "files:byMarker") and path == "/api/query":
                    value = [dict(r) for r in rows if r.get("marker") == args.get("marker")]
                    if fn == "files:byMarker":
                        for r in value:
                            r["url"] = f"{fake.url}/api/storage/{r['storageId']}" if r["storageId"] in fake.files else None
                else:
                    return self._send(200, {"status": "error", "errorMessage": f"Could not find public function for '{fn}'", "logLines": []})
                return self._send(200, {"status": "success", "value": value, "logLines": []})

            def _query(self, body: dict):
                if body.get("format") != "json":
                    return self._send(400, {"code": "BadFormat", "message": "format param must be one of [`json`]"})
                fn, args = body.get("path"), body.get("args", {})
                if fn == "_system/cli/exports:getLatest":
                    fake._advance_export()
                    value = {k: v for k, v in fake.exports[-1].items() if not k.startswith("_") or k in ("_id", "_creationTime")} if fake.exports else None
                elif fn == "_system/cli/queryImport":
                    doc = fake.imports.get(args.get("importId", ""))
                    if doc is None:
                        value = None
                    else:
                        fake._advance_import(doc)
                        value = {"_id": doc["_id"], "state": doc["state"]}
                elif fn == "_system/cli/tables":
                    value = {"page": [{"name": t} for t in sorted(fake.tables)], "isDone": True, "continueCursor": "end"}
                elif fn == "_system/cli/tableSize":
                    value = len(fake.tables.get(args.get("tableName", ""), []))
                elif fn == "_system/frontend/fileStorageV2:numFiles":
                    value = len(fake.files)
                else:
                    return self._send(200, {"status": "error", "errorMessage": f"Could not find function for '{fn}'", "logLines": []})
                return self._send(200, {"status": "success", "value": value, "logLines": []})

        return Handler
