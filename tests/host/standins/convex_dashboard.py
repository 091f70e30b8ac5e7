#!/usr/bin/env python3
"""Stand-in for ghcr.io/get-convex/convex-dashboard in the host tier: serves a page on 6791 naming the
deployment URL it was given (NEXT_PUBLIC_DEPLOYMENT_URL, the dashboard's env in self-hosted/docker)."""

import http.server
import os

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
