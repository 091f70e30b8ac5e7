#!/usr/bin/env python3
"""Stand-in for gcr.io/cloud-sql-connectors/cloud-sql-proxy in the host tier (tests/host): takes the
flags the VM's unit passes, gets an access token from the metadata server like the real proxy on GCE
(so it needs the DOCKER-USER exemption for its address), and forwards its port to "Cloud SQL" (a real
PostgreSQL the test runs, at the instance's private address) in plaintext instead of the real mTLS.

Copied from GoogleCloudPlatform/cloud-sql-proxy at 31c3b33 (v2.25.3):
- --structured-logs: JSON lines with "severity", "message", "timestamp" (internal/log/log.go replaceAttr).
- "Authorizing with Application Default Credentials" (internal/proxy/proxy.go:441),
  "[<instance>] Listening on <addr>" (proxy.go:616), with --run-connection-test "Connection test started",
  "Connection test failed" (and exit) or "Connection test passed" (proxy.go:687-692), then
  "The proxy has started successfully and is ready for new connections!" (cmd/root.go:1155).
- Health (internal/healthcheck/healthcheck.go): /startup 200 "ok" once started, else 503 "error";
  /readiness 503 until started, then 200 "ok"; /liveness 200 "ok".

Knobs (ENV of an image variant): CLOUD_SQL_STANDIN_FIRST_CONNECT_SECONDS (time its first connection to
the instance takes), CLOUD_SQL_STANDIN_INSTANCE (host:port of the instance, 10.30.0.5:3307).
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.request

INSTANCE = os.environ.get("CLOUD_SQL_STANDIN_INSTANCE", "10.30.0.5:3307")
FIRST_CONNECT = float(os.environ.get("CLOUD_SQL_STANDIN_FIRST_CONNECT_SECONDS", "0"))
STARTED = threading.Event()
STRUCTURED = False


def log(message: str, severity: str = "INFO") -> None:
    if STRUCTURED:
        line = json.dumps({"timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "severity": severity,
                           "message": message})
    else:
        line = f"{time.strftime('%Y/%m/%d %H:%M:%S', time.gmtime())} {message}"
    print(line, file=sys.stderr if severity == "ERROR" else sys.stdout, flush=True)


def flags(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    values, positional = {}, []
    for arg in argv:
        if arg.startswith("--"):
            key, _, value = arg[2:].partition("=")
            values[key] = value or "true"
        else:
            positional.append(arg)
    return values, positional


def token() -> None:
    request = urllib.request.Request(
        "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token",
        headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(request, timeout=10) as response:
        if "access_token" not in json.load(response):
            raise RuntimeError("no access_token in the metadata server's answer")


def dial() -> socket.socket:
    host, port = INSTANCE.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


class Health(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/liveness":
            code, body = 200, b"ok"
        elif path in ("/startup", "/readiness"):
            code, body = (200, b"ok") if STARTED.is_set() else (503, b"error" if path == "/startup" else b"proxy not started")
        else:
            code, body = 404, b"404 page not found"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def forward(client: socket.socket) -> None:
    try:
        upstream = dial()
    except OSError as error:
        log(f"failed to connect to instance: {error}", "ERROR")
        client.close()
        return
    threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
    pipe(upstream, client)


def main() -> None:
    global STRUCTURED
    values, positional = flags(sys.argv[1:])
    STRUCTURED = "structured-logs" in values
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # --exit-zero-on-sigterm
    instance = positional[-1].split("?")[0] if positional else ""
    if "health-check" in values:
        health = http.server.ThreadingHTTPServer((values.get("http-address", "localhost"),
                                                  int(values.get("http-port", "9090"))), Health)
        threading.Thread(target=health.serve_forever, daemon=True).start()
    log("Authorizing with Application Default Credentials")
    try:
        token()
    except Exception as error:  # the real proxy cannot get an access token either
        log(f"failed to get a token from the metadata server: {error}", "ERROR")
        sys.exit(1)
    address = f"{values.get('address', '127.0.0.1')}:{values.get('port', '5432')}"
    listener = socket.create_server((values.get("address", "127.0.0.1"), int(values.get("port", "5432"))))
    log(f"[{instance}] Listening on {address}")
    if "run-connection-test" in values:
        log("Connection test started")
        time.sleep(FIRST_CONNECT)
        try:
            dial().close()
        except OSError as error:
            log("Connection test failed", "ERROR")
            log(f"{instance}: {error}", "ERROR")
            sys.exit(1)
        log("Connection test passed")
    STARTED.set()
    log("The proxy has started successfully and is ready for new connections!")
    while True:
        client, _ = listener.accept()
        threading.Thread(target=forward, args=(client,), daemon=True).start()


if __name__ == "__main__":
    main()
