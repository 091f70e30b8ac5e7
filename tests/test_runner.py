"""tests.runner: program runs forked from one warm server behave like fresh interpreters, keep
nothing from the run before, and give byte-identical plans for the same stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from tests.conftest import ROOT
from tests import runner

PLAN_DEV = ["-m", "tools.plan", "dev", "--json"]


def test_two_runs_of_a_stack_are_byte_identical_and_match_a_fresh_interpreter():
    first = runner.run_python(PLAN_DEV, cwd=ROOT)
    second = runner.run_python(PLAN_DEV, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout == second.stdout
    fresh = subprocess.run([sys.executable, *PLAN_DEV], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert fresh.stdout == first.stdout


TYPES_PROBE = """
import gc, json, runpy, sys
import pulumi._types
sys.path.insert(0, sys.argv[1])
sys.argv = ["tools.plan", "dev", "--json"]

def worked_out():  # the classes in the SDK's per-class cache (functools.cache keeps them in a dict)
    cache = [ref for ref in gc.get_referents(pulumi._types._types_from_py_properties) if type(ref) is dict][0]
    return {key[0] for key in cache}

before = worked_out()
try:
    runpy.run_module("tools.plan", run_name="__main__")
except SystemExit:
    pass
sys.stderr.write("worked out " + json.dumps(sorted({cls.__module__ for cls in worked_out() - before})))
"""


def test_children_find_the_sdks_property_types_worked_out(tmp_path):
    """The SDK works out each resource and input/output class's property types once per process
    (functools.cache in pulumi/_types.py), a third of a warm run's time. The server does it for the
    classes a run used, so the next children find the SDK's done; the plan stays the fresh
    interpreter's (the test above). A script run imports the program afresh, so its classes are new.
    Whatever this process's server ran before, after one probe run the next finds the SDK's done."""
    probe = tmp_path / "probe.py"
    probe.write_text(TYPES_PROBE)
    runs = [runner.run_python([str(probe), str(ROOT)], cwd=ROOT) for _ in range(2)]
    second = json.loads(runs[1].stderr.rsplit("worked out ", 1)[1])
    assert second and all(module.split(".")[0] in runner.PROJECT_PACKAGES for module in second), second


def test_a_run_keeps_nothing_from_the_run_before():
    # In one reused process, a dev run after a prod run carried prod's front_door_ip output.
    before = runner.run_python(PLAN_DEV, cwd=ROOT).stdout
    prod = json.loads(runner.run_python(["-m", "tools.plan", "prod", "--json"], cwd=ROOT).stdout)
    assert "front_door_ip" in prod["outputs"]
    after_prod = runner.run_python(PLAN_DEV, cwd=ROOT).stdout
    assert "front_door_ip" not in json.loads(after_prod)["outputs"]
    assert after_prod == before


def test_the_server_forks_only_as_a_single_thread(tmp_path):
    assert runner.run_python(PLAN_DEV, cwd=ROOT).server_threads == 1
    # A server with a second thread refuses instead of forking (a lock that thread holds would be
    # held forever in the child).
    probe = textwrap.dedent("""
        import json, sys, threading, pathlib
        sys.path.insert(0, sys.argv[1])
        from tests import runner
        threading.Thread(target=threading.Event().wait, daemon=True).start()
        reply = runner._serve_one({"argv": ["-c"], "cwd": ".", "env": {}}, pathlib.Path(sys.argv[2]), set())
        print(json.dumps(reply))
    """)
    result = subprocess.run([sys.executable, "-c", probe, str(ROOT), str(tmp_path)], capture_output=True, text=True, timeout=60)
    reply = json.loads(result.stdout)
    assert reply["returncode"] == 1 and reply["threads"] >= 2
    assert "refusing to fork" in reply["stderr"]


SCRIPT = """
import gc, os, sys, tempfile
print("out", sys.argv[1:], os.getcwd(), os.environ.get("RUNNER_PROBE"), sys.path[0] == os.path.dirname(os.path.abspath(__file__)))
print("gc", gc.isenabled())  # the server turns it off; a child must have it as a fresh interpreter does
print("tmp", tempfile.gettempdir())  # from the run's own environment, not the server's cached answer
print("err", file=sys.stderr)
print("stdin:", repr(sys.stdin.read()))
if sys.argv[1] == "raise":
    raise ValueError("boom")
sys.exit(int(sys.argv[1]))
"""


def test_a_run_looks_like_a_subprocess_to_the_caller(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    env = {"PATH": "/usr/bin:/bin", "RUNNER_PROBE": "seen"}
    for arg in ("0", "3", "raise"):
        forked = runner.run_python([str(script), arg], cwd=tmp_path, env=env)
        fresh = subprocess.run([sys.executable, str(script), arg], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert (forked.returncode, forked.stdout) == (fresh.returncode, fresh.stdout)
        assert forked.stderr.splitlines()[0] == "err" and forked.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1]
    assert " seen True" in forked.stdout and "stdin: ''" in forked.stdout


def test_a_hung_run_is_stopped_at_its_timeout(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text("import time\ntime.sleep(30)\n")
    started = time.monotonic()
    result = runner.run_python([str(script)], cwd=tmp_path, timeout=0.3)  # under a second: alarm(0) meant none
    assert result.returncode != 0 and "timed out after 0.3 s" in result.stderr
    assert time.monotonic() - started < 20


def test_the_programs_packages_reach_only_children_that_could_import_them(tmp_path):
    """The server preloads convex_gcp, components and tools once a run used them; a script elsewhere
    (another team's program) must still fail to import them, like in a fresh interpreter."""
    for _ in range(2):  # the first run teaches the server what to preload
        again = runner.run_python(PLAN_DEV, cwd=ROOT)
        assert again.returncode == 0 and "Warning" not in again.stderr, again.stderr
    script = tmp_path / "outsider.py"
    script.write_text("import convex_gcp\n")
    forked = runner.run_python([str(script)], cwd=tmp_path)
    fresh = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert forked.returncode == fresh.returncode == 1
    assert "ModuleNotFoundError: No module named 'convex_gcp'" in forked.stderr


def test_the_server_preloads_the_sdk_packages_the_program_names():
    """So the first run of each server is warm too (the rest is learned from runs)."""
    import importlib.util

    names = runner._program_sdk_modules()
    assert {"pulumi_gcp.compute", "pulumi_gcp.sql", "pulumi_gcp.secretmanager", "pulumi_gcp.monitoring"} <= set(names)
    sdk = Path(importlib.util.find_spec("pulumi_gcp").submodule_search_locations[0])
    for name in names:  # each one a real package of the SDK, not a stray match
        assert (sdk / name.split(".")[1] / "__init__.py").is_file(), name


MEET = """
import pathlib, sys, time
here, there = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
here.touch()
deadline = time.monotonic() + 20
while not there.exists():  # the other run must be going at the same time
    if time.monotonic() > deadline:
        sys.exit("the other run never started while this one was waiting")
    time.sleep(0.01)
"""


def test_clients_of_one_server_run_side_by_side(tmp_path):
    """The xdist workers share the controller's server (runner.share): a run of one does not wait
    for a run of another. Two connections' runs each wait for the other's to have started."""
    script = tmp_path / "meet.py"
    script.write_text(MEET)
    a, b = tmp_path / "a", tmp_path / "b"
    clients = [runner.Server(), runner.Server()]
    results: list = [None, None]
    try:
        threads = [threading.Thread(target=lambda i=i, me=me, other=other: results.__setitem__(
            i, clients[i].run([str(script), str(me), str(other)], cwd=tmp_path, timeout=60)))
            for i, (me, other) in enumerate([(a, b), (b, a)])]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for client in clients:
            client.close()
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert results[0].server_pid == results[1].server_pid


def test_a_test_run_s_processes_share_the_controller_s_server(tmp_path):
    """Under pytest the controller shares one server (tests/conftest.py): this process and any other
    started from it reach the same one."""
    assert os.environ.get(runner.SOCKET), "tests/conftest.py shares a server"
    mine = runner.run_python(["-c", "pass"], cwd=tmp_path)
    assert mine.returncode == 0, mine.stderr
    probe = "import sys; sys.path.insert(0, sys.argv[1]); from tests import runner; r = runner.run_python(['-c', 'pass']); print(r.returncode, r.server_pid)"
    other = subprocess.run([sys.executable, "-c", probe, str(ROOT)], capture_output=True, text=True, timeout=120)
    assert other.returncode == 0, other.stderr
    assert other.stdout.split() == ["0", str(mine.server_pid)] and mine.server_pid != os.getpid()


def test_python_dash_c_runs_like_the_interpreter_s(tmp_path):
    code = "import sys; print(sys.argv, repr(sys.path[0]), __name__); sys.exit(3)"
    forked = runner.run_python(["-c", code, "a", "b"], cwd=tmp_path)
    fresh = subprocess.run([sys.executable, "-c", code, "a", "b"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (forked.returncode, forked.stdout) == (fresh.returncode, fresh.stdout) == (3, "['-c', 'a', 'b'] '' __main__\n")


def test_a_client_that_misbehaves_does_not_take_the_server_down(tmp_path):
    """One worker's connection reset with a reply unread, or a line that is not a request, drops
    that connection only: the other workers' runs go on."""
    import socket

    path = os.environ[runner.SOCKET]
    rude = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    rude.connect(path)
    rude.sendall(json.dumps({"argv": ["-c", "print('x' * 100000)"], "cwd": str(tmp_path), "env": {}}).encode() + b"\n")
    time.sleep(0.5)  # the reply is written, and never read
    rude.close()  # a reset, since data is unread
    garbage = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    garbage.connect(path)
    garbage.sendall(b"not a request\n")
    garbage.close()
    after = runner.Server()
    try:
        result = after.run(["-c", "print('still here')"], cwd=tmp_path)
    finally:
        after.close()
    assert result.stdout == "still here\n" and result.server_pid == runner.run_python(["-c", "pass"]).server_pid


def test_a_client_whose_shared_server_is_gone_starts_its_own(tmp_path, monkeypatch):
    import socket

    dead = tmp_path / "socket"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(dead))
    listener.close()  # the file stays; connecting to it is refused
    monkeypatch.setenv(runner.SOCKET, str(dead))
    # Cold: the fallback is what is tested here, not the preload, which would cost a second of CPU.
    client = runner.Server(warm=False)
    probe = ["-c", "import sys; print('ran', 'pulumi' in sys.modules)"]
    try:
        results = [client.run(probe, cwd=tmp_path) for _ in range(2)]
    finally:
        client.close()
    # And it stays cold: a run that imported nothing teaches the server nothing (no SDK either).
    assert [(r.returncode, r.stdout) for r in results] == [(0, "ran False\n")] * 2, [r.stderr for r in results]


SIBLING = "import sys\nsys.path.insert(0, sys.argv[1])\nimport benchmarks\nprint(benchmarks.WHO)\n"


def test_a_script_s_own_module_is_never_another_script_s(tmp_path):
    """A script's sibling module is not learned by the server: a later script with a sibling of the
    same name (here `benchmarks`, also a folder of this checkout) imports its own, as in a fresh
    interpreter."""
    outputs = []
    for who in ("first", "second"):
        folder = tmp_path / who
        folder.mkdir()
        (folder / "benchmarks.py").write_text(f"WHO = {who!r}\n")
        (folder / "main.py").write_text(SIBLING)
        outputs.append(runner.run_python([str(folder / "main.py"), str(folder)], cwd=folder).stdout)
    assert outputs == ["first\n", "second\n"]
