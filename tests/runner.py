"""Run Python entry points (`python -m tools.plan dev --json`, `python examples/consumer/offline.py …`)
as if in a fresh interpreter, but without paying for the interpreter and the Pulumi SDK each time.

A server process imports what the programs use once (and works out the SDK's property types of the
classes a run used, see _typed_classes), then forks a child per run: the child starts from the
server's state, which no program has ever touched, so nothing leaks from one run to the next
(reusing one process is not safe: the SDK's mock state is process-global, and a dev run after a
prod run in one process kept prod's `front_door_ip` output). Children are reaped and their
stdout/stderr returned like `subprocess.run(..., capture_output=True)`. A process starts a server of
its own on first use, or, after share() in a parent (the pytest controller), connects to that one:
the xdist workers' runs then go on side by side in children of one server.

Fork safety: the server never creates a gRPC object. With mocks the SDK talks to a Python
MockMonitor, not a channel (pulumi/runtime/settings.py only calls grpc.insecure_channel when the
monitor is an address string), and gRPC supports fork when its objects are created only after the
fork (grpc/grpc doc/fork_support.md, "use after fork"). The server also refuses to fork unless it is
its process's only thread (/proc/self/task), so no lock can be held by a thread the child lacks.

    from tests import runner
    result = runner.run_python(["-m", "tools.plan", "dev", "--json"], cwd=ROOT)  # or [script, ...], ["-c", code, ...]
    result.returncode, result.stdout, result.stderr

`python -m tests.runner --serve SOCKET` is the server; clients start it themselves (or share() does).
"""

from __future__ import annotations

import atexit
import gc
import importlib
import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Imported before the first request, so even the first run is warm; what a run imports beyond this is
# learned from that run and imported afterwards (see _preload).
PRELOAD = ("pulumi", "pulumi.runtime", "pulumi_gcp", "pulumi_random", "pydantic", "yaml")
DEFAULT_TIMEOUT = 300


def threads() -> int:
    """Threads of this process, native ones included (a C library's thread is not in `threading`)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


# --------------------------------------------------------------------------- server


# The program's own packages are preloaded too: importing them only defines functions, classes and
# constants (no config, environment or argv is read at import), and every child forks from a server
# that never ran a program, so a child sees them exactly as a fresh interpreter's import leaves them.
PROJECT_PACKAGES = ("convex_gcp", "components", "tools")


def _program_sdk_modules() -> list[str]:
    """The pulumi_gcp submodules the program names (`gcp.compute.Instance` -> pulumi_gcp.compute),
    imported before the first request so that the first run is warm too; what this misses is still
    learned from the runs."""
    names: set[str] = set()
    for path in (ROOT / "__main__.py", *sorted(ROOT.glob("components/*.py")), *sorted(ROOT.glob("convex_gcp/*.py"))):
        names.update(re.findall(r"\bgcp\.([a-z][a-z0-9_]*)\.", path.read_text()))
    return [f"pulumi_gcp.{name}" for name in sorted(names)]


def _is_project_module(module: Any) -> bool:
    """Project code other than the program's packages (scripts, examples) is imported fresh by each
    child: a script's folder is on its own sys.path only, and its modules are not the server's.
    Children that could not import the program's packages themselves drop them (_forget_project)."""
    path = getattr(module, "__file__", None) or ""
    if not path.startswith(str(ROOT) + os.sep) or path.startswith(sys.prefix + os.sep):
        return False
    return not any(path.startswith(str(ROOT / package) + os.sep) for package in PROJECT_PACKAGES)


def _is_installed_or_program(module: Any) -> bool:
    """Built in, from the interpreter's or the venv's files, or one of the program's packages: not a
    script's sibling module, whose name the server would otherwise import later from its own
    sys.path (this checkout's `vm` or `benchmarks` folder, say) and hand to another script's run."""
    path = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", None) or []), None)
    if path is None:
        return True
    places = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    places |= {str(ROOT / package) for package in PROJECT_PACKAGES}
    return path.startswith(tuple(place + os.sep for place in places))


def _loaded_modules(known: frozenset[str] = frozenset()) -> list[str]:
    """Modules this (child) process really executed, but for the `known` names (what the server had
    already): the SDKs' lazy stubs are left out, and so is anything neither installed nor the
    program's (other project code too), or without a real name."""
    # Not imported here: a cold server's `-c` run would then report (and teach) the whole SDK.
    lazy = getattr(sys.modules.get("pulumi._utils"), "_LazyModule", ())
    return sorted(
        name for name, module in list(sys.modules.items())
        if name not in known and module is not None and not name.startswith("__")
        and not isinstance(module, lazy) and _is_installed_or_program(module)
    )


def _preload(names: list[str]) -> None:
    """Import what a child used, parents first. pulumi_gcp's submodules are lazy stubs until an
    attribute is read (pulumi/_utils.py lazy_import); importing a submodule under an unloaded stub
    leaves the package half-initialised, so each stub on the way is loaded by reading an attribute."""
    for name in sorted(names, key=lambda n: (n.count("."), n)):
        try:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                module = sys.modules.get(".".join(parts[:i]))
                if module is not None:
                    hasattr(module, "__convex_gcp_preload__")
            if name not in sys.modules:
                importlib.import_module(name)
        except Exception:  # noqa: BLE001 (a module that cannot be preloaded is just imported by each child)
            pass


def _sdk_property_types() -> Any:
    """pulumi/_types.py's per-class cache (functools.cache) of a class's property types, if loaded."""
    return getattr(sys.modules.get("pulumi._types"), "_types_from_py_properties", None)


def _typed_classes() -> list[str]:
    """SDK classes whose property types this (child) run worked out: the cache's dict is what
    gc.get_referents shows of the functools.cache wrapper."""
    cached = _sdk_property_types()
    names = []
    for ref in gc.get_referents(cached) if cached is not None else []:
        if type(ref) is dict:
            for key in ref:
                cls = key[0] if isinstance(key, tuple) and len(key) == 1 else None
                if isinstance(cls, type) and not _is_project_module(sys.modules.get(cls.__module__)):
                    names.append(f"{cls.__module__}:{cls.__qualname__}")
    return sorted(names)


def _warm_types(names: list[str]) -> None:
    """Work out those classes' property types here, once, so children start with them cached."""
    warm = _sdk_property_types()
    for name in names if warm is not None else []:
        module, _, qualname = name.partition(":")
        try:
            cls = sys.modules[module]
            for part in qualname.split("."):
                cls = getattr(cls, part)
            warm(cls)
        except Exception:  # noqa: BLE001 (only an optimisation)
            pass


def _forget_project(argv: list[str], cwd: str) -> None:
    """What a fresh interpreter could not import must not be there: the program's packages stay only
    for `-m` runs from this checkout (where `python -m` finds them on sys.path too), and the `-m`
    module itself is always run from scratch (runpy warns when it is already imported)."""
    keep = argv[0] == "-m" and os.path.realpath(cwd) == str(ROOT)
    main = argv[1] if argv[0] == "-m" else None
    for name in list(sys.modules):
        if name.split(".")[0] in PROJECT_PACKAGES and (not keep or name == main):
            del sys.modules[name]


def _timeout(request: dict[str, Any]) -> float:
    return float(request.get("timeout") or DEFAULT_TIMEOUT)


def _child(request: dict[str, Any], out: str, err: str, modules: str) -> None:
    """In the forked child: become `python <argv>` in request["cwd"] and exit with its status."""
    code = 1
    known = frozenset(sys.modules)  # the server's: only what the run adds is reported back
    try:
        gc.enable()  # the server keeps it off (see serve); a fresh interpreter has it on
        # A hung run dies like a timed-out subprocess. Fractions count (setitimer, not alarm): a
        # timeout of 0.3 s used to be cut to 0, which meant the 300 s default.
        signal.setitimer(signal.ITIMER_REAL, _timeout(request))
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, out, os.O_WRONLY), (2, err, os.O_WRONLY)):
            target = os.open(path, flags)
            os.dup2(target, fd)
            os.close(target)
        sys.stdin = open(os.devnull)  # the server's stdin buffer holds requests, not the program's input
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        tempfile.tempdir = None  # the server's cached gettempdir() answer came from the server's TMPDIR
        argv = list(request["argv"])
        _forget_project(argv, request["cwd"])
        import runpy

        try:
            # sys.path[0] is what the interpreter would put there: the cwd for -m, else the script's folder.
            if argv[0] == "-m":
                sys.argv = [argv[1], *argv[2:]]
                sys.path[0] = os.getcwd()
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            elif argv[0] == "-c":
                sys.argv = ["-c", *argv[2:]]
                sys.path[0] = ""
                exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
            else:
                script = os.path.abspath(argv[0])
                sys.argv = [argv[0], *argv[1:]]
                sys.path[0] = os.path.dirname(script)
                runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as exit_:
            if exit_.code is None:
                code = 0
            elif isinstance(exit_.code, int):
                code = exit_.code
            else:
                print(exit_.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 (report like the interpreter would)
            traceback.print_exc()
            code = 1
        try:
            Path(modules).write_text(json.dumps({"modules": _loaded_modules(known), "typed": _typed_classes()}))
        except Exception:  # noqa: BLE001 (only an optimisation)
            pass
    finally:
        # os._exit: the server's exit handlers (its scratch directory's cleanup among them) are not the child's.
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _refusal(count: int) -> dict[str, Any]:
    return {"returncode": 1, "stdout": "", "stderr": f"tests.runner: the server has {count} threads; refusing to fork", "threads": count}


def _fork(request: dict[str, Any], scratch: Path, in_child: Any = None) -> tuple[int, int]:
    """Fork a child for the request; (pid, read end of a pipe that reaches EOF when the child exits).
    in_child() runs first in the child (it closes what the child must not hold)."""
    out, err, modules = (scratch / "stdout", scratch / "stderr", scratch / "modules")
    for path in (out, err, modules):
        path.write_bytes(b"")
    sys.stdout.flush()
    sys.stderr.flush()
    done, alive = os.pipe()
    # A child's garbage collections would walk (and so copy-on-write) every object the server
    # imported, half a run's CPU; frozen objects are left out of them (Python docs, gc.freeze).
    gc.freeze()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(done)
            if in_child is not None:
                in_child()
        finally:  # whatever happened, the child never returns into the server's code
            _child(request, str(out), str(err), str(modules))  # keeps `alive` open until it exits
    os.close(alive)
    return pid, done


def _reap(pid: int, done: int, request: dict[str, Any], scratch: Path, preloaded: set[str]) -> dict[str, Any]:
    """Wait for the child and build its reply; `_learned` and `_typed` are for the server."""
    os.close(done)
    _, status = os.waitpid(pid, 0)
    returncode = os.waitstatus_to_exitcode(status)
    reply = {
        "returncode": returncode,
        "stdout": (scratch / "stdout").read_text(errors="replace"),
        "stderr": (scratch / "stderr").read_text(errors="replace"),
        "threads": 1,
        "server": os.getpid(),
    }
    if returncode == -signal.SIGALRM:
        reply["stderr"] += f"\ntests.runner: timed out after {_timeout(request):g} s"
    try:
        report = json.loads((scratch / "modules").read_text() or "{}")
    except ValueError:
        report = {}
    reply["_learned"] = sorted(set(report.get("modules", [])) - preloaded)
    reply["_typed"] = report.get("typed", [])
    return reply


def _serve_one(request: dict[str, Any], scratch: Path, preloaded: set[str]) -> dict[str, Any]:
    """One run, start to end (the server interleaves the two halves of several)."""
    count = threads()
    if count != 1:
        return _refusal(count)
    pid, done = _fork(request, scratch)
    return _reap(pid, done, request, scratch, preloaded)


class _Client:
    """A connection: requests arrive one JSON line at a time, each answered before the next is read."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn, self.buffer = conn, b""


def serve(path: str, warm: bool = True) -> int:
    """Answer requests on the Unix socket `path` until stdin closes. Several clients (the xdist workers)
    may be connected; their runs go on at the same time, each in its own child. The server itself
    stays single-threaded: between select() calls it forks, reaps, and learns from what it reaped.
    A cold server (warm=False) imports nothing before its first request."""
    os.dup2(2, 1)  # anything printed by the server itself goes to its stderr
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)  # bound before the imports: clients may connect and wait meanwhile
    atexit.register(_unlink, path)  # a dead server's socket would refuse clients (they then start their own)
    # Off in the server, frozen before each fork, on again in the child: what the Python docs advise
    # for fork without exec (gc.freeze), so no collection frees holes in pages the children share.
    gc.disable()
    if warm:
        for name in PRELOAD:
            _preload([name])
        _preload(_program_sdk_modules())
    preloaded = set(sys.modules)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "listener")
    selector.register(sys.stdin, selectors.EVENT_READ, "stdin")  # closed by the client that started us
    running: dict[int, tuple[int, _Client, dict[str, Any], Path]] = {}  # pipe -> (pid, client, request, scratch)

    def close_in_child() -> None:
        selector.close()
        listener.close()
        for fd, (_, client, _, _) in running.items():
            os.close(fd)
            client.conn.close()
        for other in list(clients):
            other.conn.close()

    clients: set[_Client] = set()
    with tempfile.TemporaryDirectory(prefix="convex-gcp-runner-") as scratch_root:
        runs = 0
        while True:
            for key, _ in selector.select():
                if key.data == "stdin":
                    if not os.read(0, 4096):
                        return 0
                elif key.data == "listener":
                    conn, _ = listener.accept()
                    client = _Client(conn)
                    clients.add(client)
                    selector.register(conn, selectors.EVENT_READ, client)
                elif isinstance(key.data, _Client):
                    client = key.data
                    try:
                        data = client.conn.recv(1 << 16)
                        client.buffer += data
                        request = json.loads(client.buffer.split(b"\n", 1)[0]) if b"\n" in client.buffer else None
                    except (OSError, ValueError):  # reset, or not a request: that client only is dropped
                        data = b""
                    if not data:  # the client went away; a run of its still finishes and is reaped
                        selector.unregister(client.conn)
                        clients.discard(client)
                        client.conn.close()
                        continue
                    if request is None:
                        continue
                    client.buffer = client.buffer.split(b"\n", 1)[1]
                    count = threads()
                    if count != 1:
                        _reply(client, _refusal(count))
                        continue
                    runs += 1
                    scratch = Path(scratch_root) / str(runs)
                    scratch.mkdir()
                    pid, done = _fork(request, scratch, close_in_child)
                    selector.unregister(client.conn)  # one run at a time per client
                    running[done] = (pid, client, request, scratch)
                    selector.register(done, selectors.EVENT_READ, "child")
                else:  # a child's pipe: it exited
                    pid, client, request, scratch = running.pop(key.fd)
                    selector.unregister(key.fd)
                    reply = _reap(pid, key.fd, request, scratch, preloaded)
                    shutil.rmtree(scratch, ignore_errors=True)
                    learned, typed = reply.pop("_learned"), reply.pop("_typed")
                    if client in clients:
                        _reply(client, reply)
                        selector.register(client.conn, selectors.EVENT_READ, client)
                    if learned:
                        _preload(learned)
                    _warm_types(typed)
                    preloaded |= set(learned) | set(sys.modules)  # what warming imported too


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _reply(client: _Client, reply: dict[str, Any]) -> None:
    try:
        client.conn.sendall((json.dumps(reply) + "\n").encode())
    except OSError:
        pass  # the client went away


# --------------------------------------------------------------------------- client

SOCKET = "CONVEX_GCP_RUNNER_SOCKET"  # a shared server's socket (see share()); else each process starts its own


def _start_server(warm: bool = True) -> tuple[subprocess.Popen, str, str]:
    """A server process, its socket path, and the directory holding it (a Unix socket path must stay
    under ~100 bytes, so the directory is a short one when TMPDIR is long)."""
    home = tempfile.mkdtemp(prefix="convex-gcp-runner-")
    if len(home) > 80:
        shutil.rmtree(home)
        home = tempfile.mkdtemp(prefix="convex-gcp-runner-", dir="/tmp")
    path = os.path.join(home, "socket")
    process = subprocess.Popen([sys.executable, "-m", "tests.runner", "--serve", path, *([] if warm else ["--cold"])], cwd=ROOT,
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, path, home


def _stop_server(process: subprocess.Popen, home: str) -> None:
    try:
        if process.stdin:
            process.stdin.close()
        process.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        process.kill()
        process.wait()
    finally:
        shutil.rmtree(home, ignore_errors=True)


class Server:
    """A connection to a server (the shared one, else one this process starts), one request at a time."""

    def __init__(self, warm: bool = True) -> None:
        self._warm = warm  # for a server of its own: see serve()
        self._lock = threading.Lock()
        self._own: tuple[subprocess.Popen, str] | None = None
        self._shared_failed = False
        self._sock: socket.socket | None = None
        self._file: Any = None

    def _ensure(self) -> Any:
        if self._file is not None:
            return self._file
        shared = os.environ.get(SOCKET, "")
        sock = self._connect(shared) if shared and not self._shared_failed else None
        if sock is None:
            self._shared_failed = bool(shared)  # gone: this process runs a server of its own from now on
            if self._own is None or self._own[0].poll() is not None:
                process, _, home = _start_server(self._warm)
                self._own = (process, home)
            sock = self._connect(os.path.join(self._own[1], "socket"))
            if sock is None:
                raise RuntimeError("tests.runner: the server it started does not answer")
        self._sock, self._file = sock, sock.makefile("rwb")
        return self._file

    @staticmethod
    def _connect(path: str) -> socket.socket | None:
        """A connection, or None. A server binds its socket first thing, so a missing socket means
        "starting" (waited for); one that still refuses after 0.2 s (a server listens the moment it
        has bound) belongs to a server that is gone."""
        started, refused = time.monotonic(), None
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
                return sock
            except (FileNotFoundError, ConnectionRefusedError) as error:
                sock.close()
                now = time.monotonic()
                if isinstance(error, ConnectionRefusedError):
                    refused = refused or now
                if now - started > 60 or (refused and now - refused > 0.2):
                    return None
                time.sleep(0.01)

    def run(self, argv: list[str], cwd: Path | str = ROOT, timeout: float = DEFAULT_TIMEOUT,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        env = dict(os.environ if env is None else env)
        request = {"argv": [str(a) for a in argv], "cwd": str(cwd), "timeout": float(timeout), "env": env}
        with self._lock:
            channel = self._ensure()
            try:
                channel.write((json.dumps(request) + "\n").encode())
                channel.flush()
            except OSError:
                self._disconnect()
                raise RuntimeError("tests.runner: the server went away") from None
            with selectors.DefaultSelector() as selector:
                selector.register(self._sock, selectors.EVENT_READ)
                # The child times itself out; the margin covers the server's own work around it.
                ready = selector.select(timeout + 60)
            line = channel.readline() if ready else b""
            if not line:
                self._disconnect()
                raise RuntimeError(f"tests.runner: no answer for {argv}")
        reply = json.loads(line)
        result = subprocess.CompletedProcess([sys.executable, *request["argv"]], reply["returncode"], reply["stdout"], reply["stderr"])
        result.server_threads = reply["threads"]  # type: ignore[attr-defined]
        result.server_pid = reply.get("server")  # type: ignore[attr-defined]
        return result

    def _disconnect(self) -> None:
        file, sock, self._file, self._sock = self._file, self._sock, None, None
        for closable in (file, sock):
            try:
                if closable is not None:
                    closable.close()
            except OSError:
                pass

    def close(self) -> None:
        self._disconnect()
        own, self._own = self._own, None
        if own is not None:
            _stop_server(*own)


_server = Server()
atexit.register(_server.close)
_shared: tuple[subprocess.Popen, str] | None = None


def share() -> None:
    """Start a server for this process and every process it starts afterwards (they find its socket
    in the environment): xdist workers then share one server, its imports and what it learned."""
    global _shared
    if not hasattr(os, "fork") or _shared is not None:
        return
    process, path, home = _start_server()
    _shared = (process, home)
    os.environ[SOCKET] = path
    atexit.register(stop_sharing)


def stop_sharing() -> None:
    global _shared
    shared, _shared = _shared, None
    _server.close()
    if shared is not None:
        os.environ.pop(SOCKET, None)
        _stop_server(*shared)


def run_python(argv: list[str], cwd: Path | str = ROOT, timeout: float = DEFAULT_TIMEOUT,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Like subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=…),
    but forked from a warm server. Environment variables read when a preloaded module is imported
    keep the server's values; everything else sees `env`."""
    if not hasattr(os, "fork"):
        return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    return _server.run(argv, cwd=cwd, timeout=timeout, env=env)


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or sys.argv[1] != "--serve" or sys.argv[3:] not in ([], ["--cold"]):
        sys.exit("usage: python -m tests.runner --serve SOCKET [--cold] (started by tests.runner.run_python or share)")
    sys.exit(serve(sys.argv[2], warm=sys.argv[3:] != ["--cold"]))
