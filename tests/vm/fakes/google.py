"""Fake Google endpoints on 127.0.0.1 for the VM boot-path sandbox.

- MetadataServer: computeMetadata/v1 (attributes with ETag and
  wait_for_change/last_etag/timeout_sec long-polls, token, scopes); requires
  `Metadata-Flavor: Google`; can fail the next N requests or be down.
- ApisServer: Secret Manager (`versions/latest:access`, `:addVersion`, with
  403/404 modes) and the Cloud SQL Admin `instances.get`.
- HealthServer: proxy `/readiness` (200 once the proxy container has started, whatever
  the database: cloud-sql-proxy >= v2.11.1) and backend `/version` (200 only once
  the backend has connected to the database and bound its port; fakes/convex.py).

Upstream behaviour each fake copies (one-line comments at each place name the detail):
- metadata server: https://cloud.google.com/compute/docs/metadata/querying-metadata (Metadata-Flavor,
  403 without it, 404 for a missing key, 503 during maintenance, wait_for_change/last_etag/timeout_sec)
- tokens: https://cloud.google.com/compute/docs/access/authenticate-workloads (access_token, expires_in);
  caching until near expiry: https://github.com/golang/oauth2/blob/master/google/default.go ComputeTokenSource
- 401/403/404 error bodies: https://cloud.google.com/apis/design/errors (google.rpc.Status),
  https://cloud.google.com/secret-manager/docs/reference/rest/v1/projects.secrets.versions/access
- Cloud SQL Admin connectSettings: https://cloud.google.com/sql/docs/postgres/admin-api/rest/v1/connect/get,
  as read by https://github.com/GoogleCloudPlatform/cloud-sql-go-connector/blob/main/internal/cloudsql/refresh.go
- proxy readiness: https://github.com/GoogleCloudPlatform/cloud-sql-proxy/blob/main/internal/healthcheck/healthcheck.go
  (HandleReadiness, independent of the instance since v2.11.1, PR #2207)
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from functools import lru_cache
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from tests.fakes.serving import PooledHTTPServer

from fakes import convex

TOKEN = "ya29.fake-access-token-0123456789"  # prefix of every token the fake hands out
SCOPE_CP = "https://www.googleapis.com/auth/cloud-platform"
INSTANCE_IDENTITY = {"instance/id": "4520031799277581759", "instance/zone": "projects/123456789012/zones/europe-west1-b",
                     "project/project-id": "test-proj"}


class _Server:
    handler_cls: type

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; on a kept-alive connection Nagle's algorithm
            # holds the body until the client's delayed ACK, ~40 ms a response (CPython
            # Lib/socketserver.py StreamRequestHandler.disable_nagle_algorithm sets TCP_NODELAY).
            disable_nagle_algorithm = True

            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: bytes | str, ctype="application/json", headers=None):
                data = body.encode() if isinstance(body, str) else body
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _send_cut_short(self, data: bytes, ctype: str):
                # 200 and its Content-Length, then half the body and a closed connection: curl's exit 18
                # "transfer closed with N bytes remaining to read" (CURLE_PARTIAL_FILE,
                # https://curl.se/libcurl/c/libcurl-errors.html), after its -w said 200.
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.close_connection = True

            def do_GET(self):
                outer._record(self, "GET", b"")
                outer.handle(self, "GET", b"")

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                outer._record(self, "POST", body)
                outer.handle(self, "POST", body)

        self.httpd = PooledHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.httpd.start()

    def _record(self, h, method, body):
        with self.lock:
            self.requests.append({"method": method, "path": h.path, "t": time.time(),
                                  "conn": h.client_address[1],  # the client's port: one per connection
                                  "auth": h.headers.get("Authorization", ""),
                                  "flavor": h.headers.get("Metadata-Flavor", "")})

    def close(self) -> None:
        self.httpd.stop()

    def _take(self, counts: dict[str, int], key: str) -> bool:
        """Use up one of the faults counted for this key, if any is left."""
        with self.lock:
            if counts.get(key, 0) <= 0:
                return False
            counts[key] -= 1
            return True

    def handle(self, h, method, body):  # pragma: no cover - overridden
        raise NotImplementedError


class Tokens:
    """Access tokens with a lifetime, shared by the metadata server (issues) and the APIs (check)."""

    def __init__(self) -> None:
        self.lifetime = 3599.0
        # The metadata server caches a token and hands out the same one, with `expires_in` counting down,
        # until it is close to expiry (golang.org/x/oauth2 google.ComputeTokenSource: "The shortest MDS
        # token cache time is 4 minutes"); scaled down here as `renew_before` seconds.
        self.renew_before = 0.0
        self.issued: dict[str, float] = {}
        self.issued_at: dict[str, float] = {}
        # The metadata server's token answer is {"access_token", "expires_in", "token_type"}
        # (https://cloud.google.com/compute/docs/access/authenticate-workloads#applications); a token stops
        # working when its time is up. An event that ends every token issued before it (issue time -> dead?), so a test can say "the
        # token from before the pulls is dead after them" without racing a wall-clock lifetime.
        self.dead_after: Callable[[float], bool] | None = None
        # What `expires_in` says, when a test wants the script told less than the token's real life.
        self.reported_expires_in: int | None = None
        self.revoked: set[str] = set()
        self.current = ""
        self.lock = threading.Lock()

    def get(self) -> tuple[str, int]:
        with self.lock:
            now = time.time()
            if not self.current or self.issued[self.current] - now <= self.renew_before or self._ended(self.current):
                self.current = f"{TOKEN}-{len(self.issued) + 1}"
                self.issued[self.current] = now + self.lifetime
                self.issued_at[self.current] = now
            if self.reported_expires_in is not None:
                return self.current, self.reported_expires_in
            return self.current, max(0, int(self.issued[self.current] - now))

    def _ended(self, token: str) -> bool:
        return self.dead_after is not None and self.dead_after(self.issued_at[token])

    def valid(self, token: str) -> bool:
        with self.lock:
            return (token in self.issued and token not in self.revoked and time.time() < self.issued[token]
                    and not self._ended(token))

    def cut_short(self, token: str) -> None:
        """The token stops working before its time (revoked, or expired early); the metadata server's
        next answer is a new one."""
        with self.lock:
            self.revoked.add(token)
            if self.current == token:
                self.current = ""


@lru_cache(maxsize=64)  # every metadata request asks; the attributes (the startup script among them) rarely change
def _etag(attributes: tuple[tuple[str, str], ...]) -> str:
    return hashlib.sha256(json.dumps(dict(attributes), sort_keys=True).encode()).hexdigest()[:16]


class MetadataServer(_Server):
    def __init__(self, attributes: dict[str, str], scopes: list[str] | None = None) -> None:
        self.tokens = Tokens()
        self.attributes = dict(attributes)
        self.scopes = scopes if scopes is not None else [SCOPE_CP]
        self.fail_next = 0
        self.down = False
        self.drop_next: dict[str, int] = {}  # path under /computeMetadata/v1/ -> requests to cut off
        self.unavailable_next: dict[str, int] = {}  # path under /computeMetadata/v1/ -> requests to answer 503
        self.truncate_next: dict[str, int] = {}  # attribute key -> answers to cut off halfway through the body
        self.has_service_account = True
        self.cond = threading.Condition()
        self.second = 1.0  # real seconds per timeout_sec second: tests run the long-poll's clock faster
        super().__init__()

    @property
    def etag(self) -> str:
        return _etag(tuple(sorted(self.attributes.items())))

    def set_attributes(self, **changes: str | None) -> None:
        with self.cond:
            for k, v in changes.items():
                k = k.replace("_", "-")
                if v is None:
                    self.attributes.pop(k, None)
                else:
                    self.attributes[k] = v
            self.cond.notify_all()

    def handle(self, h, method, body):
        with self.lock:
            if self.down or self.fail_next > 0:
                self.fail_next = max(0, self.fail_next - 1)
                # cloud.google.com/compute/docs/metadata/querying-metadata: 503 during maintenance events; retry.
                return h._send(503, "metadata unavailable", "text/plain")
        if h.headers.get("Metadata-Flavor") != "Google":
            # Same page: a request without Metadata-Flavor: Google is refused with 403.
            return h._send(403, "Missing Metadata-Flavor:Google header.", "text/plain")
        url = urlsplit(h.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path
        prefix = "/computeMetadata/v1/"
        if not path.startswith(prefix):
            return h._send(404, "not found", "text/plain")
        rel = path[len(prefix):]
        if self._take(self.unavailable_next, rel):
            # A 503 for this path only: the answer the metadata server gives "during maintenance
            # events", to be retried (https://cloud.google.com/compute/docs/metadata/querying-metadata).
            return h._send(503, "metadata unavailable", "text/plain")
        if self._take(self.drop_next, rel):
            # The connection closes with no answer: curl's exit 52 "Empty reply from server", a transport
            # error (CURLE_GOT_NOTHING, https://curl.se/libcurl/c/libcurl-errors.html).
            h.close_connection = True
            return None
        if rel == "instance/attributes/":
            if q.get("wait_for_change") == "true":
                # querying-metadata "Waiting for change": returns at once when last_etag differs, else at timeout_sec.
                timeout = float(q.get("timeout_sec", "60")) * self.second
                last = q.get("last_etag", "")
                deadline = time.time() + timeout
                with self.cond:
                    while self.etag == last and time.time() < deadline:
                        self.cond.wait(timeout=min(0.2, max(0.0, deadline - time.time())))
            with self.cond:
                etag, body_json = self.etag, json.dumps(self.attributes)
            if q.get("recursive") == "true":
                return h._send(200, body_json, headers={"ETag": etag})
            return h._send(200, "\n".join(sorted(self.attributes)) + "\n", "text/plain", {"ETag": etag})
        if rel.startswith("instance/attributes/"):
            key = rel[len("instance/attributes/"):]
            with self.cond:
                value = self.attributes.get(key)
            if value is None:
                # A missing key is a 404 (querying-metadata); the script reads absent unit keys as "not wanted".
                return h._send(404, "not found", "text/html")
            if self._take(self.truncate_next, key):
                return h._send_cut_short(value.encode(), "application/text")
            return h._send(200, value, "application/text", {"ETag": self.etag})
        if rel == "instance/service-accounts/default/token":
            if not self.has_service_account:
                return h._send(404, "not found", "text/html")
            token, left = self.tokens.get()
            # cloud.google.com/compute/docs/access/authenticate-workloads: {"access_token", "expires_in", "token_type"}.
            return h._send(200, json.dumps({"access_token": token, "expires_in": left, "token_type": "Bearer"}))
        if rel == "instance/service-accounts/default/scopes":
            return h._send(200, "".join(s + "\n" for s in self.scopes), "application/text")
        if rel in INSTANCE_IDENTITY:
            # instance/id (a number), instance/zone as projects/<number>/zones/<zone>, project/project-id
            # (https://cloud.google.com/compute/docs/metadata/predefined-metadata-keys).
            return h._send(200, INSTANCE_IDENTITY[rel], "application/text")
        return h._send(404, "not found", "text/html")


class ApisServer(_Server):
    """Secret Manager v1 + Cloud SQL Admin v1 instances.get."""

    def __init__(self, tokens: Tokens | None = None) -> None:
        self.tokens = tokens or Tokens()
        self.connect_mode = "ok"  # ok | forbidden (connectSettings only)
        # Cut the next N tokens short at their first use: that call and every later one with the same
        # token get 401, as with a token revoked or expired early, until a new token is fetched
        # (RFC 6750 section 3.1 invalid_token: "expired, revoked, malformed" -> 401,
        # https://www.rfc-editor.org/rfc/rfc6750#section-3.1).
        self.cut_tokens_short = 0
        self.cut_next: dict[str, int] = {}  # secret id -> latest:access answers to cut off halfway through the body
        # secret id -> latest:access answers sent as a 200 without a body: what curl 7.75.0 could leave
        # of a kept answer (its -w came before closing the -o file; curl commit 65ca229461, 7.76.0)
        self.empty_next: dict[str, int] = {}
        self.secrets: dict[str, list[bytes]] = {}
        # secret id -> forbidden | scope | missing | unavailable | disabled | forbidden_add (access ok, add 403)
        self.modes: dict[str, str] = {}
        self.sql_mode = "ok"  # ok | forbidden | missing
        # Server CA PEMs of the instance: [0] is the current CA (instances.get serverCaCert).
        self.server_cas: list[str] = []
        self.list_cas_mode = "ok"  # ok | forbidden (listServerCas only)
        # Escape '=', '+' and '/' the way some Google JSON encoders do (\u003d, \u002b, \/).
        self.escape_json = False
        # IAM Credentials generateAccessToken (POST v1/projects/-/serviceAccounts/{account}:generateAccessToken,
        # answer {"accessToken", "expireTime"}: https://cloud.google.com/iam/docs/reference/credentials/rest/v1/projects.serviceAccounts/generateAccessToken):
        # accounts the VM account may act as -> tokens issued for them.
        self.actable: set[str] = set()
        self.acted_tokens: dict[str, str] = {}
        # sqladmin v1 instances.executeSql (https://cloud.google.com/sql/docs/postgres/admin-api/rest/v1/instances/executeSql):
        # (sql, database, account) -> None, or the database's error text
        # (answered as 200 with "status", as SqlInstancesExecuteSqlResponse carries a failed statement's error).
        self.execute_sql = lambda sql, database, account: None
        self.executed: list[dict] = []
        super().__init__()

    def add_secret(self, sid: str, *versions: bytes) -> None:
        self.secrets[sid] = list(versions)

    @staticmethod
    def _error(code: int, status: str, message: str, reason: str | None = None) -> str:
        err = {"code": code, "message": message, "status": status}
        if reason:
            err["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason}]
        return json.dumps({"error": err}, indent=2)

    def _json(self, value) -> str:
        text = json.dumps(value, indent=2)
        if self.escape_json:
            text = text.replace("=", "\\u003d").replace("+", "\\u002b").replace("/", "\\/")
        return text

    def handle(self, h, method, body):
        auth = h.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        with self.lock:
            if self.cut_tokens_short > 0 and self.tokens.valid(token):
                self.cut_tokens_short -= 1
                self.tokens.cut_short(token)
        if not token or not (self.tokens.valid(token) or token in self.acted_tokens):
            # Google APIs answer an expired or revoked token with 401 UNAUTHENTICATED (google.rpc.Code 16).
            return h._send(401, self._error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential."))
        path = urlsplit(h.path).path
        if method == "POST" and path.startswith("/v1/projects/-/serviceAccounts/") and path.endswith(":generateAccessToken"):
            account = path[len("/v1/projects/-/serviceAccounts/"):-len(":generateAccessToken")]
            if account not in self.actable or token in self.acted_tokens:  # an acted-as token cannot act again
                return h._send(403, self._error(403, "PERMISSION_DENIED", f"Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).", "IAM_PERMISSION_DENIED"))
            acted = "ya29.acted-" + hashlib.sha256(f"{account}{len(self.acted_tokens)}".encode()).hexdigest()[:32]
            with self.lock:
                self.acted_tokens[acted] = account
            return h._send(200, self._json({"accessToken": acted, "expireTime": "2099-01-01T00:00:00Z"}))
        if method == "POST" and path.startswith("/v1/projects/") and path.endswith(":executeSql"):
            account = self.acted_tokens.get(token)
            if account is None:  # only the grant account is a database user allowed to grant
                return h._send(403, self._error(403, "PERMISSION_DENIED", "The client is not authorized to make this request.", "IAM_PERMISSION_DENIED"))
            payload = json.loads(body or b"{}")
            with self.lock:
                self.executed.append({"path": path, "account": account, **payload})
            error = self.execute_sql(payload.get("sqlStatement", ""), payload.get("database", ""), account)
            answer = {"results": [], "messages": []}
            if error:
                answer["status"] = {"code": 3, "message": error}
            return h._send(200, self._json(answer))
        if path.startswith("/v1/projects/") and "/instances/" in path:
            if self.sql_mode == "forbidden":
                return h._send(403, self._error(403, "PERMISSION_DENIED", "The client is not authorized to make this request.", "IAM_PERMISSION_DENIED"))
            if self.sql_mode == "missing":
                return h._send(404, self._error(404, "NOT_FOUND", "The Cloud SQL instance does not exist."))
            if path.endswith("/connectSettings"):
                # sqladmin v1 connectSettings: what cloud-sql-go-connector trusts (refresh.go fetchMetadata).
                if self.connect_mode == "forbidden":
                    return h._send(403, self._error(403, "PERMISSION_DENIED", "The client is not authorized to make this request.", "IAM_PERMISSION_DENIED"))
                body = {"kind": "sql#connectSettings", "backendType": "SECOND_GEN", "region": "europe-west1",
                        "serverCaMode": "GOOGLE_MANAGED_CAS_CA"}
                if self.server_cas:
                    body["serverCaCert"] = {"kind": "sql#sslCert", "cert": self.server_cas[0]}
                return h._send(200, self._json(body))
            if path.endswith("/listServerCas"):
                if self.list_cas_mode == "forbidden":
                    return h._send(403, self._error(403, "PERMISSION_DENIED", "The client is not authorized to make this request.", "IAM_PERMISSION_DENIED"))
                certs = [{"kind": "sql#sslCert", "cert": pem, "commonName": f"C=US,O=Google\\, Inc,CN=Google Cloud SQL Server CA {i}",
                          "sha1Fingerprint": hashlib.sha1(pem.encode()).hexdigest()} for i, pem in enumerate(self.server_cas)]
                return h._send(200, self._json({"certs": certs, "activeVersion": "current", "kind": "sql#instancesListServerCas"}))
            instance = {"kind": "sql#instance", "state": "RUNNABLE"}
            if self.server_cas:
                instance["serverCaCert"] = {"kind": "sql#sslCert", "cert": self.server_cas[0]}
            return h._send(200, json.dumps(instance))
        if method == "GET" and path.endswith("/versions/latest:access"):
            sid = path[len("/v1/"):-len("/versions/latest:access")]
            return self._access(h, sid)
        if method == "POST" and path.endswith(":addVersion"):
            sid = path[len("/v1/"):-len(":addVersion")]
            return self._add(h, sid, body)
        return h._send(404, self._error(404, "NOT_FOUND", "no such method"))

    # Secret Manager v1 error shapes (cloud.google.com/secret-manager/docs/reference/rest, google.rpc.Status):
    # 403 PERMISSION_DENIED with ErrorInfo reason IAM_PERMISSION_DENIED or ACCESS_TOKEN_SCOPE_INSUFFICIENT,
    # 404 NOT_FOUND for a missing secret or version, 400 FAILED_PRECONDITION for a disabled version.
    def _mode_error(self, h, sid):
        mode = self.modes.get(sid)
        if mode == "forbidden":
            h._send(403, self._error(403, "PERMISSION_DENIED",
                                     f"Permission 'secretmanager.versions.access' denied for resource '{sid}/versions/latest' (or it may not exist).",
                                     "IAM_PERMISSION_DENIED"))
            return True
        if mode == "scope":
            h._send(403, self._error(403, "PERMISSION_DENIED", "Request had insufficient authentication scopes.",
                                     "ACCESS_TOKEN_SCOPE_INSUFFICIENT"))
            return True
        if mode == "unavailable":
            h._send(503, self._error(503, "UNAVAILABLE", "The service is currently unavailable."))
            return True
        if mode == "disabled":
            h._send(400, self._error(400, "FAILED_PRECONDITION", f"Secret Version [{sid}/versions/1] is in DISABLED state."))
            return True
        if mode == "missing" or sid not in self.secrets:
            h._send(404, self._error(404, "NOT_FOUND", f"Secret [{sid}] not found or has no versions."))
            return True
        return False

    def _access(self, h, sid):
        if self._mode_error(h, sid):
            return None
        versions = self.secrets[sid]
        if not versions:
            return h._send(404, self._error(404, "NOT_FOUND", f"Secret [{sid}] not found or has no versions."))
        data = base64.b64encode(versions[-1]).decode()
        body = self._json({"name": f"{sid}/versions/{len(versions)}", "payload": {"data": data, "dataCrc32c": "0"}}).encode()
        if self._take(self.cut_next, sid):
            return h._send_cut_short(body, "application/json")
        if self._take(self.empty_next, sid):
            return h._send(200, b"")
        return h._send(200, body)

    def _add(self, h, sid, body):
        mode = self.modes.get(sid)
        if mode == "forbidden_add":
            return h._send(403, self._error(403, "PERMISSION_DENIED",
                                            f"Permission 'secretmanager.versions.add' denied for resource '{sid}'.",
                                            "IAM_PERMISSION_DENIED"))
        if mode in ("forbidden", "scope", "unavailable") or mode == "missing" or sid not in self.secrets:
            self._mode_error(h, sid)
            return None
        payload = json.loads(body)["payload"]["data"]
        self.secrets[sid].append(base64.b64decode(payload))
        return h._send(200, json.dumps({"name": f"{sid}/versions/{len(self.secrets[sid])}", "state": "ENABLED"}))


class HealthServer(_Server):
    """/readiness (proxy) and /version (backend), driven by the fake docker state."""

    def __init__(self, docker_state: Path) -> None:
        self.docker_state = docker_state
        super().__init__()

    def _state(self) -> dict:
        try:
            return json.loads(self.docker_state.read_text())
        except (OSError, ValueError):
            return {}

    @property
    def db_up(self) -> bool:
        return bool(self._state().get("sql_reachable", True))

    @db_up.setter
    def db_up(self, value: bool) -> None:
        import fcntl

        with open(self.docker_state.parent / "state.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            st = self._state()
            if value and not st.get("sql_reachable", True):
                st["sql_up_at"] = time.time()  # a backend waiting for it connects from now on
            st["sql_reachable"] = bool(value)
            tmp = self.docker_state.with_suffix(".tmp")
            tmp.write_text(json.dumps(st))
            tmp.replace(self.docker_state)

    def _running(self, name: str) -> bool:
        """Started, not exited, and past its start time (fakes/convex.py: neither answers at once)."""
        st = self._state()
        return convex.ready(st.get("containers", {}).get(name), time.time(), st)

    def handle(self, h, method, body):
        path = urlsplit(h.path).path
        if path == "/readiness":
            # cloud-sql-proxy internal/healthcheck/healthcheck.go HandleReadiness (since v2.11.1, PR #2207):
            # started, not stopping, below max connections. It never dials the instance.
            ok = self._running("cloudsql-proxy")
            return h._send(200 if ok else 503, "ok" if ok else "error", "text/plain")
        if path == "/version":
            # Convex binds its HTTP port only after it connected to Postgres and loaded the database
            # (crates/local_backend/src/main.rs: make_app before serve); knob "loading" holds it there
            # for as long as a test needs (a start that outlasts every autohealing delay).
            ok = self._running("convex-backend") and self.db_up and not self._state().get("loading")
            return h._send(200 if ok else 503, "fake-convex-version" if ok else "down", "text/plain")
        return h._send(404, "not found", "text/plain")
