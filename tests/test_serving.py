"""tests/fakes/serving.py: the fakes' servers serve each connection on a thread of its own, reuse
idle threads, and stop without a poll to wait for."""

from __future__ import annotations

import socket
import socketserver
import threading
import time

from tests.fakes.serving import PooledServing


class _Server(PooledServing, socketserver.TCPServer):
    pass


class _Handler(socketserver.StreamRequestHandler):
    """One line in, one line out; "block" waits until the test releases it; "boom" raises."""

    release = threading.Event()
    served_by: list[threading.Thread] = []  # the thread objects themselves: an id could be reused

    def handle(self) -> None:
        self.served_by.append(threading.current_thread())
        line = self.rfile.readline().strip()
        if line == b"block":
            self.release.wait(30)
        if line == b"boom":
            raise RuntimeError("a fake's bug")
        self.wfile.write(line + b" done\n")


def _ask(port: int, word: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(word + b"\n")
        return conn.makefile("rb").readline()


def _idle_again(server: _Server) -> None:
    deadline = time.monotonic() + 30
    while server._pool_idle < 1:
        assert time.monotonic() < deadline, "no connection thread became idle"
        time.sleep(0.001)


def _server() -> _Server:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.start()
    return server


def test_a_blocked_connection_never_delays_another():
    """A metadata long-poll holds its thread: every other connection still gets one."""
    _Handler.release.clear()
    server = _server()
    try:
        port = server.server_address[1]
        blocked: list[bytes] = []
        waiter = threading.Thread(target=lambda: blocked.append(_ask(port, b"block")))
        waiter.start()
        assert [_ask(port, b"a"), _ask(port, b"b")] == [b"a done\n", b"b done\n"]
        assert blocked == []
        _Handler.release.set()
        waiter.join(30)
        assert blocked == [b"block done\n"]
    finally:
        server.stop()


def test_threads_are_reused_and_a_handler_s_error_is_not_the_server_s(capsys):
    server = _server()
    try:
        port = server.server_address[1]
        assert _ask(port, b"first") == b"first done\n"
        _idle_again(server)
        _Handler.served_by.clear()
        assert _ask(port, b"boom") == b""  # the connection closes; the error is reported
        for n in range(20):
            _idle_again(server)  # a client may be answered before the thread has put itself back
            assert _ask(port, b"%d" % n) == b"%d done\n" % n
        assert len(set(_Handler.served_by)) == 1  # a thread per connection would be 21
    finally:
        server.stop()
    assert "a fake's bug" in capsys.readouterr().err


def test_stop_ends_the_accept_loop_and_the_idle_threads():
    before = set(threading.enumerate())
    server = _server()
    port = server.server_address[1]
    assert _ask(port, b"x") == b"x done\n"
    server.stop()
    for thread in set(threading.enumerate()) - before:
        thread.join(10)
        assert not thread.is_alive()
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        refused = False
    except ConnectionRefusedError:
        refused = True
    assert refused


def test_a_second_stop_does_nothing():
    """As shutdown() and server_close() may be repeated: a second stop() must not write to, or close,
    a descriptor number the first one gave back (another file may have it by then)."""
    server = _server()
    server.stop()
    server.stop()
