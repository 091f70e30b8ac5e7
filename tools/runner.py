"""Run Python entry points (`python -m tools.plan dev --json`, `python examples/consumer/offline.py …`)
as if in a fresh interpreter, but without paying for the interpreter and the Pulumi SDK each time.

One server process per client imports what the programs use once (and works out the SDK's property
types of the classes a run used, see _typed_classes), then forks a child per run: the child starts
from the server's state, which no program has ever touched, so nothing leaks from one run to the
next (reusing one process is not safe: the SDK's mock state is process-global, and a dev
run after a prod run in one process kept prod's `front_door_ip` output). Children are reaped and
their stdout/stderr returned like `subprocess.run(..., capture_output=True)`.

Fork safety: the server never creates a gRPC object. With mocks the SDK talks to a Python
MockMonitor, not a channel (pulumi/runtime/settings.py only calls grpc.insecure_channel when the
monitor is an address string), and gRPC supports fork when its objects are created only after the
fork (grpc/grpc doc/fork_support.md, "use after fork"). The server also refuses to fork unless it is
its process's only thread (/proc/self/task), so no lock can be held by a thread the child lacks.

    from tools import runner
    result = runner.run_python(["-m", "tools.plan", "dev", "--json"], cwd=ROOT)
    result.returncode, result.stdout, result.stderr

`python -m tools.runner --serve` is the server; clients start it themselves.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
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


def _loaded_modules() -> list[str]:
    """Modules this (child) process really executed: the SDKs' lazy stubs are left out, and so is
    project code and anything without a real name."""
    lazy = getattr(importlib.import_module("pulumi._utils"), "_LazyModule", ())
    return sorted(
        name for name, module in list(sys.modules.items())
        if module is not None and not name.startswith("__") and not isinstance(module, lazy) and not _is_project_module(module)
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
            Path(modules).write_text(json.dumps({"modules": _loaded_modules(), "typed": _typed_classes()}))
        except Exception:  # noqa: BLE001 (only an optimisation)
            pass
    finally:
        # os._exit: the server's exit handlers (its scratch directory's cleanup among them) are not the child's.
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _serve_one(request: dict[str, Any], scratch: Path, preloaded: set[str]) -> dict[str, Any]:
    count = threads()
    if count != 1:
        return {"returncode": 1, "stdout": "", "stderr": f"tools.runner: the server has {count} threads; refusing to fork", "threads": count}
    out, err, modules = (scratch / "stdout", scratch / "stderr", scratch / "modules")
    for path in (out, err, modules):
        path.write_bytes(b"")
    sys.stdout.flush()
    sys.stderr.flush()
    # A child's garbage collections would walk (and so copy-on-write) every object the server
    # imported, half a run's CPU; frozen objects are left out of them (Python docs, gc.freeze).
    gc.freeze()
    pid = os.fork()
    if pid == 0:
        _child(request, str(out), str(err), str(modules))
    _, status = os.waitpid(pid, 0)
    returncode = os.waitstatus_to_exitcode(status)
    reply = {
        "returncode": returncode,
        "stdout": out.read_text(errors="replace"),
        "stderr": err.read_text(errors="replace"),
        "threads": count,
    }
    if returncode == -signal.SIGALRM:
        reply["stderr"] += f"\ntools.runner: timed out after {_timeout(request):g} s"
    try:
        report = json.loads(modules.read_text() or "{}")
    except ValueError:
        report = {}
    reply["_learned"] = sorted(set(report.get("modules", [])) - preloaded)
    reply["_typed"] = report.get("typed", [])
    return reply


def serve() -> int:
    """Read one JSON request per line on stdin, answer one JSON line each on the original stdout."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything printed by the server itself must not corrupt the replies
    # Off in the server, frozen before each fork, on again in the child: what the Python docs advise
    # for fork without exec (gc.freeze), so no collection frees holes in pages the children share.
    gc.disable()
    for name in PRELOAD:
        _preload([name])
    _preload(_program_sdk_modules())
    preloaded = set(sys.modules)
    with tempfile.TemporaryDirectory(prefix="convex-gcp-runner-") as scratch:
        for line in sys.stdin:
            if not line.strip():
                continue
            reply = _serve_one(json.loads(line), Path(scratch), preloaded)
            learned = reply.pop("_learned")
            typed = reply.pop("_typed")
            replies.write(json.dumps(reply) + "\n")
            replies.flush()
            if learned:
                _preload(learned)
                preloaded |= set(learned) | set(sys.modules)
            _warm_types(typed)
    return 0


# --------------------------------------------------------------------------- client


class Server:
    """A `python -m tools.runner --serve` process and the requests sent to it, one at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the server now (it imports the SDK while the caller does other work)."""
        with self._lock:
            self._ensure()

    def _ensure(self) -> subprocess.Popen:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "tools.runner", "--serve"], cwd=ROOT, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )
        return self._process

    def run(self, argv: list[str], cwd: Path | str = ROOT, timeout: float = DEFAULT_TIMEOUT,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        env = dict(os.environ if env is None else env)
        request = {"argv": [str(a) for a in argv], "cwd": str(cwd), "timeout": float(timeout), "env": env}
        with self._lock:
            process = self._ensure()
            assert process.stdin and process.stdout
            try:
                process.stdin.write(json.dumps(request) + "\n")
                process.stdin.flush()
            except BrokenPipeError:
                self.close()
                raise RuntimeError("tools.runner: the server exited") from None
            with selectors.DefaultSelector() as selector:
                selector.register(process.stdout, selectors.EVENT_READ)
                # The child times itself out; the margin covers the server's own work around it.
                ready = selector.select(timeout + 60)
            line = process.stdout.readline() if ready else ""
            if not line:
                self.close()
                raise RuntimeError(f"tools.runner: no answer for {argv}")
        reply = json.loads(line)
        result = subprocess.CompletedProcess([sys.executable, *request["argv"]], reply["returncode"], reply["stdout"], reply["stderr"])
        result.server_threads = reply["threads"]  # type: ignore[attr-defined]
        return result

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.stdin:
                process.stdin.close()
            process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        finally:
            if process.stdout:
                process.stdout.close()


_server = Server()
atexit.register(_server.close)


def start() -> None:
    if hasattr(os, "fork"):
        _server.start()


def run_python(argv: list[str], cwd: Path | str = ROOT, timeout: float = DEFAULT_TIMEOUT,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Like subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=…),
    but forked from this process's server. Environment variables read when a preloaded module is
    imported keep the server's values; everything else sees `env`."""
    if not hasattr(os, "fork"):
        return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    return _server.run(argv, cwd=cwd, timeout=timeout, env=env)


if __name__ == "__main__":
    if sys.argv[1:] != ["--serve"]:
        sys.exit("usage: python -m tools.runner --serve (started by tools.runner.run_python)")
    sys.exit(serve())
