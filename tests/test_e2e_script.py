"""tools/e2e.py against stand-ins: a fake Convex backend (tests/fakes/convex_http.py) whose writes
land in a REAL PostgreSQL cluster's documents table, and stand-in npm/npx on PATH."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from convex_gcp.settings import CONVEX_VERSION
from tests.conftest import ROOT
from tests.doctor.conftest import _as_owner, _bin, initdb
from tests.fakes.convex_http import FakeConvex
from tools import e2e

ADMIN_KEY = "convex-local|0123abcd"
PASSWORD = "e2eTestPassw0rd"


@pytest.fixture(scope="module")
def database_url():
    """A throwaway cluster on a free port: the Convex database owned by its login user, as the local stack's."""
    # Outside pytest's 0700 tmp dirs: the server runs as the postgres user (initdb refuses root).
    root = Path(tempfile.mkdtemp(prefix="convex-gcp-e2e-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    os.chmod(root, 0o755)
    data = root / "data"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    initdb(data)
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\n")
    (data / "pg_hba.conf").write_text("local all admin trust\nhost all admin 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
    subprocess.run(_as_owner([_bin("pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "start"]), check=True, capture_output=True)
    try:
        for sql in (f"CREATE ROLE convex LOGIN PASSWORD '{PASSWORD}'", "CREATE DATABASE convex_local OWNER convex"):
            subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "admin", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc", sql], check=True, capture_output=True)
        yield f"postgresql://convex:{PASSWORD}@127.0.0.1:{port}/convex_local"
    finally:
        subprocess.run(_as_owner([_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    source = (ROOT / "tests" / "fakes" / "npx_stand_in.py").read_text()
    for name in ("npm", "npx"):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable} -IS\n{source}")  # standard library only: no site scan
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "npx.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_NPX_LOG", str(log))
    monkeypatch.setenv("CONVEX_DEPLOYMENT", "dev:should-be-dropped")
    monkeypatch.delenv("CONVEX_SELF_HOSTED_ADMIN_KEY", raising=False)
    return log


@pytest.fixture
def fake(request, database_url):
    server = FakeConvex(database_url, ADMIN_KEY, **getattr(request, "param", {}))
    yield server
    server.close()


def outputs(fake: FakeConvex, key: str = ADMIN_KEY) -> dict:
    # The local stack's admin_key_command, with `docker exec` replaced by a command that prints like generate_admin_key.sh.
    command = f"{sys.executable} -c \"import sys; print('Admin key:', file=sys.stderr); print('{key}')\""
    return {"convex_url": fake.convex_url, "convex_site_url": fake.site_url, "admin_key_command": command}


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_a_row_goes_in_and_comes_back_through_query_http_action_and_postgres(fake, stand_ins, database_url):
    report = e2e.run("local", outputs(fake), database_url, timeout=30)
    assert report.error == ""
    assert list(report.steps) == ["version", "admin_key", "deploy", "mutation", "query", "http_action", "postgres"]
    assert ("GET site", "/messages") in fake.requests
    deployed = calls(stand_ins)
    assert [c["tool"] for c in deployed] == ["npm", "npx"]
    assert deployed[1]["args"] == ["--no-install", "convex", "deploy", "--yes", "--typecheck", "disable"]
    assert deployed[1]["url"] == fake.convex_url and deployed[1]["deployment"] is None
    # Deployed from a copy: the repository's example stays clean.
    assert not Path(deployed[1]["cwd"]).is_relative_to(ROOT)


@pytest.mark.parametrize(
    ("fake", "step", "message"),
    [
        ({"drop_writes": True}, "postgres", "expected exactly one live document"),
        ({"site_broken": True}, "http_action", "answered HTTP 404"),
        ({"wrong_body": True}, "query", "the query returned"),
    ],
    indirect=["fake"],
)
def test_each_broken_layer_fails_its_own_step(fake, stand_ins, database_url, step, message):
    report = e2e.run("local", outputs(fake), database_url, timeout=30)
    assert message in report.error
    assert list(report.steps)[-1] == step


def test_a_wrong_admin_key_fails_the_deploy_without_printing_the_key(fake, stand_ins, database_url):
    report = e2e.run("local", outputs(fake, key="wrong|key"), database_url, timeout=30)
    assert "convex deploy" in report.error and "401" in report.error
    assert "wrong|key" not in report.error


def test_no_lockfile_fails_like_npm_ci(fake, stand_ins, database_url, tmp_path):
    app = tmp_path / "app"
    shutil.copytree(e2e.APP, app)
    (app / "package-lock.json").unlink()
    report = e2e.run("local", outputs(fake), database_url, app=app, timeout=30)
    assert "npm ci" in report.error and "package-lock.json" in report.error


def test_a_database_without_the_row_or_unreachable_fails(fake, stand_ins, database_url):
    unreachable = database_url.rsplit("@", 1)[0] + "@127.0.0.1:1/convex_local"
    report = e2e.run("local", outputs(fake), unreachable, timeout=30)
    assert "cannot query documents in Postgres" in report.error


def test_version_must_answer(stand_ins):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    report = e2e.run("local", {"convex_url": f"http://127.0.0.1:{port}", "convex_site_url": "http://127.0.0.1:1"}, "", timeout=0.2)
    assert "/version did not answer 200 within 0.2 s" in report.error


def test_admin_key_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVEX_SELF_HOSTED_ADMIN_KEY", "from-env")
    assert e2e.admin_key({}) == "from-env"
    monkeypatch.delenv("CONVEX_SELF_HOSTED_ADMIN_KEY")
    with pytest.raises(e2e.E2EError, match="no admin key"):
        e2e.admin_key({})
    with pytest.raises(e2e.E2EError, match="could not print the admin key"):
        e2e.admin_key({"admin_key_command": f"{sys.executable} -c 'import sys; sys.exit(1)'"})


def test_example_app_pins_the_cli_of_the_pinned_backend():
    package = json.loads((e2e.APP / "package.json").read_text())
    assert CONVEX_VERSION in e2e.CLI_FOR_BACKEND, f"add the convex npm release for backend {CONVEX_VERSION} to tools/e2e.py"
    assert package["dependencies"]["convex"] == e2e.CLI_FOR_BACKEND[CONVEX_VERSION]
    lock = json.loads((e2e.APP / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/convex"]["version"] == package["dependencies"]["convex"]


def test_example_app_has_schema_mutation_query_and_http_action():
    convex = e2e.APP / "convex"
    assert "defineSchema" in (convex / "schema.ts").read_text()
    functions = (convex / "messages.ts").read_text()
    assert "export const send = mutation(" in functions and "export const byMarker = query(" in functions
    http = (convex / "http.ts").read_text()
    assert 'path: "/messages"' in http and "export default http" in http


def test_command_line_reads_saved_outputs_and_the_local_postgres_url(fake, stand_ins, database_url, tmp_path, capsys):
    saved = tmp_path / "outputs.json"
    saved.write_text(json.dumps({**outputs(fake), "postgres_url": database_url}))
    assert e2e.main(["local", "--outputs", str(saved), "--timeout", "30"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["error"] == "" and report["stack"] == "local" and "postgres" in report["steps"]


def test_command_line_fails_without_a_database_to_check(fake, stand_ins, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("E2E_DATABASE_URL", raising=False)
    saved = tmp_path / "outputs.json"
    saved.write_text(json.dumps(outputs(fake)))
    assert e2e.main(["dev", "--outputs", str(saved), "--timeout", "30"]) == 1
    assert "no database URL" in json.loads(capsys.readouterr().out)["error"]
