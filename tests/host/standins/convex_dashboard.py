#!/usr/bin/env python3
"""Stand-in for ghcr.io/get-convex/convex-dashboard in the host tier: serves a page on 6791 naming the
deployment URL it was given (NEXT_PUBLIC_DEPLOYMENT_URL, the dashboard's env in self-hosted/docker).

The real image runs `node ./server.js` as PID 1 (get-convex/convex-backend 652b828
self-hosted/docker-build/Dockerfile.dashboard, CMD), Next.js's standalone server, which exits 0 on SIGTERM
and SIGINT unless NEXT_MANUAL_SIG_HANDLE is set (vercel/next.js packages/next/src/server/lib/start-server.ts,
https://github.com/vercel/next.js/pull/60059): `docker stop` ends it at once, and its unit stops as
"inactive", not "failed". A Python PID 1 without a handler would ignore SIGTERM (the kernel sends PID 1 no
default action) and be killed 10 s later with 137: the host tier saw exactly that before this handler.
"""

import http.server
import os
import signal
import sys

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
signal.signal(signal.SIGINT, lambda *_: sys.exit(0))

PAGE = f"<html><body>Convex dashboard for {os.environ.get('NEXT_PUBLIC_DEPLOYMENT_URL', '')}</body></html>".encode()


class Page(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)


print("  ▲ Next.js (stand-in) - Local: http://0.0.0.0:6791", flush=True)
http.server.ThreadingHTTPServer(("0.0.0.0", 6791), Page).serve_forever()
