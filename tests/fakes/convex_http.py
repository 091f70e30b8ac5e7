"""A stand-in Convex backend for tools/e2e.py: the HTTP API's function endpoints, an HTTP action
on a separate site origin, and the writes landing in a real Postgres `documents` table.

Copied from upstream (get-convex/convex-backend @ 652b828):
- POST /api/query|/api/mutation with {"path", "args", "format": "json"}; 200 with {"status": "success",
  "value", "logLines"} or {"status": "error", "errorMessage", "logLines"} (npm-packages/docs/docs/http-api/index.mdx).
  Clients treat any status other than 200 and 560 (UDF failed) as a failure with a text body
  (npm-packages/convex/src/browser/http_client.ts); the exact status for an undeployed function
  is not verified here, so the fake answers 400 and e2e must treat every non-success as failure.
- GET /version answers 200 with the version text (the official compose health check).
- documents(id BYTEA, ts BIGINT, table_id BYTEA, json_value BYTEA, deleted BOOLEAN, prev_ts BIGINT),
  json_value the document's serde_json text (crates/postgres/src/sql.rs, lib.rs document_params).
- `npx convex deploy` authenticates with "Authorization: Convex <admin key>"; this fake's push
  endpoint is its own (the real CLI's protocol is not copied), reached by the stand-in npx.
"""

from __future__ import annotations

import json
import os
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

import psycopg

from tests.fakes.serving import PooledHTTPServer

DOCUMENTS_DDL = """CREATE TABLE IF NOT EXISTS documents (
    id BYTEA NOT NULL, ts BIGINT NOT NULL, table_id BYTEA NOT NULL,
    json_value BYTEA NOT NULL, deleted BOOLEAN DEFAULT false, prev_ts BIGINT)"""


class FakeConvex:
    def __init__(self, database_url: str, admin_key: str, *, drop_writes: bool = False, site_broken: bool = False, wrong_body: bool = False):
        self.database_url, self.admin_key = database_url, admin_key
        self.drop_writes, self.site_broken, self.wrong_body = drop_writes, site_broken, wrong_body
        self.deployed = False
        self.rows: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        with psycopg.connect(database_url) as connection:
            connection.execute(DOCUMENTS_DDL)
        self.api = PooledHTTPServer(("127.0.0.1", 0), self._handler(site=False))
        self.site = PooledHTTPServer(("127.0.0.1", 0), self._handler(site=True))
        for server in (self.api, self.site):
            server.start()

    @property
    def convex_url(self) -> str:
        return f"http://127.0.0.1:{self.api.server_address[1]}"

    @property
    def site_url(self) -> str:
        return f"http://127.0.0.1:{self.site.server_address[1]}"

    def close(self) -> None:
        for server in (self.api, self.site):
            server.stop()

    def _insert(self, doc: dict) -> None:
        if self.drop_writes:
            return
        with psycopg.connect(self.database_url) as connection:
            connection.execute(
                "INSERT INTO documents (id, ts, table_id, json_value, deleted) VALUES (%s, %s, %s, %s, false)",
                (os.urandom(16), time.time_ns(), b"messages", json.dumps(doc, separators=(",", ":")).encode()),
            )

    def _handler(self, site: bool):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body, content_type: str = "application/json") -> None:
                data = (json.dumps(body) if not isinstance(body, str) else body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                url = urlparse(self.path)
                fake.requests.append(("GET" + (" site" if site else ""), url.path))
                if not site and url.path == "/version":
                    return self._send(200, "unknown", "text/plain")
                if site and url.path == "/messages" and fake.deployed and not fake.site_broken:
                    marker = parse_qs(url.query).get("marker", [""])[0]
                    return self._send(200, [r for r in fake.rows if r["marker"] == marker])
                self._send(404, "No matching routes found", "text/plain")

            def do_POST(self):  # noqa: N802
                url = urlparse(self.path)
                fake.requests.append(("POST", url.path))
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if site:
                    return self._send(404, "No matching routes found", "text/plain")
                if url.path == "/test/push":
                    if self.headers.get("Authorization") != f"Convex {fake.admin_key}":
                        return self._send(401, {"code": "BadAdminKey", "message": "The provided admin key was invalid for this instance"})
                    fake.deployed = True
                    return self._send(200, {})
                if url.path not in ("/api/query", "/api/mutation"):
                    return self._send(404, "No matching routes found", "text/plain")
                if set(body) - {"path", "args", "format"} or body.get("format", "json") != "json":
                    return self._send(400, "bad request", "text/plain")
                path, args = body.get("path"), body.get("args", {})
                if not fake.deployed or path not in ("messages:send", "messages:byMarker"):
                    return self._send(400, f"Could not find public function for '{path}'", "text/plain")
                if path == "messages:send":
                    doc = {"_id": os.urandom(8).hex(), "_creationTime": time.time() * 1000, "marker": args["marker"],
                           "body": args["body"] + (" (changed)" if fake.wrong_body else "")}
                    fake.rows.append(doc)
                    fake._insert(doc)
                    return self._send(200, {"status": "success", "value": doc["_id"], "logLines": []})
                rows = [r for r in fake.rows if r["marker"] == args.get("marker")]
                return self._send(200, {"status": "success", "value": rows, "logLines": []})

        return Handler
