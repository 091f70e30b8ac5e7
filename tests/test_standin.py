"""The stand-in server behind the VM sandbox's tools and the bootstrap's gcloud: a script must see
exactly what a Python stand-in would have given it (stdout, stderr, exit status, argv as passed),
through either client (C, and bash where there is no compiler), and the session-wide plan cache
must run each program once however many workers ask."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import types

import pytest

from tests import conftest
from tests.fakes.standin import StandInServer

DONE: list[str] = []
RELEASE = threading.Event()
SEP = "\x1f"  # no real tool prints NUL, and a bash variable cannot hold one
TRICKY = ["", "two words", "a\nnewline", "tab\there", "quote ' \" $HOME `x`", "ünïcødé ✓", "-n", "--flag=x", "*"]


def echo_back(tool: str, argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    if argv[:1] == ["boom"]:
        raise ValueError("fake bug")
    if argv[:1] == ["nul"]:
        return 0, "a\0b", "ERR"
    if argv[:1] == ["slow"]:
        RELEASE.wait(10)  # until the test has killed the client
        DONE.append(argv[1])
        return 0, "", ""
    if argv[:1] == ["big"]:
        return 0, f"{argv[1]}:" + "x" * 300_000 + "\n", ""
    return int(env["STATUS"] or 0), SEP.join([tool, env["FAKE_ROOT"], *argv]), env["ERR"]


CLIENTS = ["c", "bash"]  # the C client when the machine has a compiler, the bash one otherwise


def server_in(tmp_path, client: str) -> StandInServer:
    server = StandInServer(echo_back, ("FAKE_ROOT", "STATUS", "ERR"), "tests/test_standin.py")
    server.install(tmp_path, ["tool-a"], client=client)
    return server


@pytest.fixture(params=CLIENTS)
def server(tmp_path, request):
    running = server_in(tmp_path, request.param)
    yield running
    running.stop()


def call(tmp_path, *argv: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(tmp_path / "tool-a"), *argv], capture_output=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "FAKE_ROOT": "/root dir", "STATUS": "", "ERR": "", **env})


def test_argv_stdout_stderr_and_status_arrive_unchanged(server, tmp_path):
    result = call(tmp_path, *TRICKY, STATUS="3", ERR="warn: ünï\nno newline at the end")
    assert result.returncode == 3
    assert result.stdout.decode().split(SEP) == ["tool-a", "/root dir", *TRICKY]
    assert result.stderr.decode() == "warn: ünï\nno newline at the end"
    empty = call(tmp_path)
    assert (empty.returncode, empty.stdout.decode(), empty.stderr) == (0, f"tool-a{SEP}/root dir", b"")


def test_long_arguments_arrive_whole(server, tmp_path):
    """Fields longer than the server's read buffer (8 KiB) arrive in pieces and are joined again."""
    long = ["é" * 50_000, "x" * 8191, "y" * 8192, "", "z" * 70_000]
    result = call(tmp_path, *long)
    assert result.returncode == 0 and result.stdout.decode().split(SEP) == ["tool-a", "/root dir", *long]


def test_large_output_and_concurrent_calls(server, tmp_path):
    results: list[subprocess.CompletedProcess] = []
    threads = [threading.Thread(target=lambda i=i: results.append(call(tmp_path, "big", str(i)))) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.stdout.decode() for r in results) == [f"{i}:" + "x" * 300_000 + "\n" for i in range(6)]
    assert all(r.returncode == 0 and r.stderr == b"" for r in results)


def test_a_fake_that_raises_fails_the_call_with_its_error(server, tmp_path):
    result = call(tmp_path, "boom")
    assert result.returncode == 70 and "stand-in tool-a: ValueError('fake bug')" in result.stderr.decode()


def test_output_a_bash_variable_cannot_carry_fails_the_call(server, tmp_path):
    result = call(tmp_path, "nul")
    assert result.returncode == 70 and b"must not contain NUL" in result.stderr and result.stdout == b""


def test_a_killed_client_s_call_finishes_and_can_be_waited_for(server, tmp_path):
    """Killing the client (Sandbox.stop kills the script's process group) does not stop its call in
    the server; wait_idle is how a test knows the fake's state is final."""
    DONE.clear()  # of the other client's run
    RELEASE.clear()
    client = subprocess.Popen([str(tmp_path / "tool-a"), "slow", "late write"], start_new_session=True,
                              env={"PATH": "/usr/bin:/bin", "FAKE_ROOT": "/sandbox-1", "STATUS": "", "ERR": ""})
    deadline = time.monotonic() + 5
    while not server.busy("/sandbox-1") and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(client.pid, signal.SIGKILL)
    client.wait()
    assert "late write" not in DONE
    RELEASE.set()
    assert server.wait_idle("/sandbox-1", timeout=5) and "late write" in DONE
    assert server.wait_idle("/another-sandbox", timeout=0)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_reply_cut_short_fails_the_call(tmp_path, client):
    """A server that dies halfway through its reply: the call fails (125), it does not print half
    of an output and exit with the status the reply began with."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_half() -> None:
        conn, _ = listener.accept()
        conn.recv(1 << 16)
        conn.sendall(b"0 10 0\nabc")  # 10 bytes of stdout announced, 3 sent
        conn.close()

    threading.Thread(target=answer_half, daemon=True).start()
    stub = types.SimpleNamespace(port=listener.getsockname()[1], env_names=("FAKE_ROOT", "STATUS", "ERR"), fake="test")
    StandInServer.install(stub, tmp_path, ["tool-a"], client=client)  # type: ignore[arg-type]
    try:
        result = call(tmp_path, "x")
    finally:
        listener.close()
    assert result.returncode == 125


@pytest.mark.parametrize("client", CLIENTS)
def test_without_the_server_the_call_fails(tmp_path, client):
    server = server_in(tmp_path, client)
    server.stop()
    result = call(tmp_path, "x")
    assert result.returncode != 0 and b"Connection refused" in result.stderr


def test_session_plan_cache_runs_each_command_once(tmp_path, monkeypatch):
    runs: list[list[str]] = []

    def fake_run(command, cwd, timeout):
        runs.append(command)
        return subprocess.CompletedProcess(command, 1, '{"error": "x"}', "stderr text")

    monkeypatch.setattr(conftest.runner, "run_python", fake_run)
    monkeypatch.setenv(conftest.SESSION_DIR, str(tmp_path))
    first = conftest._run_shared(["-m", "tools.plan", "dev", "--json"])
    again = conftest._run_shared(["-m", "tools.plan", "dev", "--json"])
    other = conftest._run_shared(["-m", "tools.plan", "prod", "--json"])
    assert first == again == (1, '{"error": "x"}', "stderr text") and other == first
    assert runs == [["-m", "tools.plan", "dev", "--json"], ["-m", "tools.plan", "prod", "--json"]]
    # No cache directory (one process, or a run outside pytest): every call runs.
    monkeypatch.setenv(conftest.SESSION_DIR, "")
    conftest._run_shared(["-m", "tools.plan", "dev", "--json"])
    assert len(runs) == 3
