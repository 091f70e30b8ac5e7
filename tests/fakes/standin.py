"""Command-line stand-ins served by one thread pool in the test process.

A stand-in written in Python costs an interpreter start per call (~20 ms here; a boot of the VM
script makes some 30 calls, a bootstrap run about 80). Instead, what goes on PATH under the tool's
name is a small client: it sends its argv and the environment variables the fake reads to this
server over 127.0.0.1, then prints the call's stdout and stderr and exits with its status. The
script under test sees the same streams and exit codes it would get from a Python stand-in.

The client is standin_client.c, built once per session (~0.5 ms a call), or, with no C compiler on
the machine, the bash script CLIENT (~1.5 ms a call). Both speak the same protocol; test_standin
runs every case against each.

Upstream behaviour this relies on:
- bash opens `/dev/tcp/host/port` as a TCP socket (https://www.gnu.org/software/bash/manual/bash.html#Redirections);
- `read -N n` reads exactly n characters, bytes under LC_ALL=C, and a shell variable cannot hold NUL
  (https://www.gnu.org/software/bash/manual/bash.html#Bash-Builtins, `read`), so output with NUL is refused;
- each connection is served on a thread of its own (tests/fakes/serving.py), as socketserver's
  ThreadingMixIn does (https://github.com/python/cpython/blob/3.11/Lib/socketserver.py).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import socketserver
import subprocess
import threading
from functools import cache
from pathlib import Path
from typing import Callable

from tests.fakes.serving import PooledServing
from tests.session import session_dir

# (tool, argv, env) -> (exit status, stdout, stderr)
Handler = Callable[[str, list[str], dict[str, str]], tuple[int, str, str]]

CLIENT = """#!/bin/bash
# Stand-in for {tool}: the call runs in the test process (tests/fakes/standin.py, {fake}).
exec 3<>/dev/tcp/127.0.0.1/{port}
printf '%s\\0' {tool} {env_values} "$#" "$@" >&3
LC_ALL=C  # the lengths below are bytes
read -r rc out_n err_n <&3 || exit 125
out='' err=''
((out_n == 0)) || IFS= read -r -d '' -N "$out_n" out <&3 || exit 125
((err_n == 0)) || IFS= read -r -d '' -N "$err_n" err <&3 || exit 125
printf '%s' "$out"
printf '%s' "$err" >&2
exit "$rc"
"""


FAKE_BUG = 70  # the exit status of a call whose fake raised (EX_SOFTWARE): not one any real tool uses for its own errors


class _Request(socketserver.StreamRequestHandler):
    server: StandInServer

    def field(self) -> str:
        data = bytearray()
        while True:
            # What has arrived, without consuming it (https://docs.python.org/3/library/io.html#io.BufferedReader.peek).
            buffered = self.rfile.peek()
            if not buffered:
                raise EOFError("request cut short")
            end = buffered.find(b"\0")
            if end >= 0:
                data += self.rfile.read(end + 1)[:-1]
                return data.decode(errors="surrogateescape")  # argv is bytes on Linux; keep what is not UTF-8
            data += self.rfile.read(len(buffered))

    def handle(self) -> None:
        tool = "?"
        key = ""
        try:
            tool = self.field()
            env = {name: self.field() for name in self.server.env_names}
            key = env[self.server.env_names[0]] if self.server.env_names else ""
            argv = [self.field() for _ in range(int(self.field()))]
            self.server.begin(key)
            try:
                rc, out, err = self.server.handler(tool, argv, env)
            finally:
                self.server.end(key)
            if "\0" in out or "\0" in err:  # a bash variable cannot carry NUL: the client would shift bytes
                raise ValueError("a stand-in's output must not contain NUL bytes")
        except Exception as exc:  # a fake's own bug shows in the test's output instead of hanging the script
            rc, out, err = FAKE_BUG, "", f"stand-in {tool}: {exc!r}\n"
        stdout, stderr = out.encode(errors="surrogateescape"), err.encode(errors="surrogateescape")
        try:
            self.wfile.write(f"{rc} {len(stdout)} {len(stderr)}\n".encode() + stdout + stderr)
        except OSError:
            pass  # the client was killed (a stopped script's process group); see wait_idle


class StandInServer(PooledServing, socketserver.TCPServer):
    def __init__(self, handler: Handler, env_names: tuple[str, ...], fake: str) -> None:
        super().__init__(("127.0.0.1", 0), _Request)
        self.handler, self.env_names, self.fake = handler, env_names, fake
        self.port = self.server_address[1]
        # Calls in progress by the value of the first forwarded variable (a sandbox's FAKE_ROOT).
        self._busy: dict[str, int] = {}
        self._idle = threading.Condition()
        self.start()

    def begin(self, key: str) -> None:
        with self._idle:
            self._busy[key] = self._busy.get(key, 0) + 1

    def end(self, key: str) -> None:
        with self._idle:
            self._busy[key] -= 1
            self._idle.notify_all()

    def busy(self, key: str) -> int:
        with self._idle:
            return self._busy.get(key, 0)

    def wait_idle(self, key: str, timeout: float = 30.0) -> bool:
        """Wait for calls of a stopped script to finish. Killing a client does not stop its call here
        (a Python stand-in died with its process group), so its state writes may still be under way."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._busy.get(key), timeout=timeout)

    def install(self, bin_dir: Path, tools: tuple[str, ...] | list[str], client: str = "") -> None:
        """Write a client for each tool into bin_dir (which the caller puts first on PATH): the C one
        when there is a compiler, else the bash one; `client` ("c" or "bash") chooses."""
        binary = compiled_client() if client in ("", "c") else None
        if client == "c" and binary is None:
            raise RuntimeError("no C compiler (cc) for the stand-in client")
        env_values = " ".join(f'"${{{name}-}}"' for name in self.env_names)
        for tool in tools:
            path = bin_dir / tool
            path.unlink(missing_ok=True)
            if binary:
                # A copy, not a link: tests overwrite a tool in their own bin_dir with a shim.
                shutil.copyfile(binary, path)
                (bin_dir / f".{tool}.standin").write_text("\n".join([str(self.port), *self.env_names]) + "\n")
            else:
                path.write_text(CLIENT.format(tool=tool, fake=self.fake, port=self.port, env_values=env_values))
            path.chmod(0o755)


CLIENT_SOURCE = Path(__file__).with_name("standin_client.c")


@cache
def compiled_client() -> Path | None:
    """standin_client.c built in the session directory (once for all workers), or None when the
    machine has no C compiler. A compiler that fails is an error, not a fallback."""
    cc = shlex.split(os.environ.get("CC") or "cc")  # CC may carry flags ("gcc -O2"), as make allows
    if not cc or shutil.which(cc[0]) is None:
        return None
    source = CLIENT_SOURCE.read_bytes()
    binary = session_dir() / f"standin-client-{hashlib.sha256(source).hexdigest()[:16]}"
    if not binary.exists():
        building = binary.with_name(f"{binary.name}.{os.getpid()}.{threading.get_ident()}")
        built = subprocess.run([*cc, "-O2", "-o", str(building), str(CLIENT_SOURCE)], capture_output=True, text=True)
        if built.returncode != 0:
            raise RuntimeError(f"{' '.join(cc)} could not build {CLIENT_SOURCE}:\n{built.stderr}")
        os.replace(building, binary)  # atomic: a worker building at the same time replaces it with the same
    return binary


_shared: dict[Handler, StandInServer] = {}
_shared_lock = threading.Lock()


def shared(handler: Handler, env_names: tuple[str, ...], fake: str) -> StandInServer:
    """The server of this handler in this process (one per xdist worker), started on first use."""
    with _shared_lock:
        if handler not in _shared:
            _shared[handler] = StandInServer(handler, env_names, fake)
        return _shared[handler]
