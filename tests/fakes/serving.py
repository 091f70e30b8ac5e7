"""How the fakes' servers serve: every connection on a thread of its own, as socketserver's
ThreadingMixIn does, but threads are reused instead of started per connection, and the accept loop
sleeps in select() until a connection or stop() comes instead of polling.

Why: a VM sandbox's run makes some forty requests and stand-in calls, and starting a thread was
about half of what serving one cost; serve_forever(poll_interval) wakes every 5 ms while a sandbox
lives (its shutdown() waits for the next wake-up: BaseServer.serve_forever, https://github.com/python/cpython/blob/3.11/Lib/socketserver.py).
What a client sees does not change: a request that blocks (a metadata long-poll) holds its thread
and never delays another connection, because an idle thread is used only when there is one.
"""

from __future__ import annotations

import json
import os
import queue
import selectors
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any


class PooledServing:
    """Mixin for a socketserver.BaseServer subclass: `start()` serves in a background thread, `stop()`
    ends that and the idle connection threads, and closes the listening socket."""

    def start(self) -> None:
        self._pool_wake_r, self._pool_wake_w = os.pipe()
        self._pool_queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pool_idle = 0
        self._pool_stopped = False
        self._pool_lock = threading.Lock()
        self._pool_accepting = threading.Thread(target=self._accept_loop, daemon=True)
        self._pool_accepting.start()

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)  # type: ignore[arg-type]
            selector.register(self._pool_wake_r, selectors.EVENT_READ)
            while True:
                if any(key.fileobj == self._pool_wake_r for key, _ in selector.select()):
                    return
                self.handle_request()  # type: ignore[attr-defined]  # accepts the one waiting (BaseServer.handle_request)

    # Replaces ThreadingMixIn.process_request (https://github.com/python/cpython/blob/3.11/Lib/socketserver.py): a thread per connection, an idle one reused.
    def process_request(self, request: socket.socket, client_address: Any) -> None:
        with self._pool_lock:
            reuse = self._pool_idle > 0
            if reuse:
                self._pool_idle -= 1
        if reuse:
            self._pool_queue.put((request, client_address))
        else:
            threading.Thread(target=self._connection_thread, args=(request, client_address), daemon=True).start()

    def _connection_thread(self, request: socket.socket, client_address: Any) -> None:
        item: tuple | None = (request, client_address)
        while item is not None:
            request, client_address = item
            # As ThreadingMixIn.process_request_thread (https://github.com/python/cpython/blob/3.11/Lib/socketserver.py): a handler's error is reported, never fatal.
            try:
                self.finish_request(request, client_address)  # type: ignore[attr-defined]
            except Exception:
                self.handle_error(request, client_address)  # type: ignore[attr-defined]
            finally:
                self.shutdown_request(request)  # type: ignore[attr-defined]
            with self._pool_lock:
                if self._pool_stopped:
                    return
                self._pool_idle += 1
            item = self._pool_queue.get()

    def stop(self) -> None:
        """Stop accepting (at once, no poll to wait for), let the idle threads end, close the socket.
        A connection still being served finishes on its own thread."""
        with self._pool_lock:
            if self._pool_stopped:
                return  # like shutdown() + server_close(), a second call does nothing
            self._pool_stopped = True
            idle, self._pool_idle = self._pool_idle, 0
        os.write(self._pool_wake_w, b"x")
        self._pool_accepting.join()
        for _ in range(idle):
            self._pool_queue.put(None)
        os.close(self._pool_wake_r)
        os.close(self._pool_wake_w)
        self.server_close()  # type: ignore[attr-defined]


class PooledHTTPServer(PooledServing, HTTPServer):
    """http.server's HTTPServer with each connection on a thread, as its ThreadingHTTPServer
    (https://github.com/python/cpython/blob/3.11/Lib/http/server.py), threads reused."""


class LoopbackFake:
    """A fake with its own HTTP server on 127.0.0.1 (a free port), serving from the moment it is made."""

    def _listen(self, handler) -> None:
        self.httpd = PooledHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.httpd.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.httpd.stop()


class JsonHandler(BaseHTTPRequestHandler):
    """A fake's request handler: HTTP/1.1 (keep-alive, as Google's and Convex's servers), no access log,
    answers in JSON unless given bytes or text."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body, content_type: str = "application/json", headers=None) -> None:
        data = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
