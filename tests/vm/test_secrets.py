"""Secrets never reach argv, output, metadata-derived files or the plain env file."""

from __future__ import annotations

import base64
import os
import stat

from sandbox import ADMIN_KEY_SECRET_ID, DB_PASSWORD_SECRET_ID


def test_secrets_never_in_argv_or_output(sandbox, booted):
    assert sandbox.config["DB_PASSWORD_SECRET_ID"] == DB_PASSWORD_SECRET_ID  # the boot read the password too
    r = booted
    secrets = sandbox.secret_values()
    # instance secret, DB password, the token prefix, the token(s) handed out, admin key
    assert len(secrets) >= 5
    argv = sandbox.all_argv_text()
    for value in secrets:
        assert value not in argv
        assert value not in r.output

    # Password inserted into POSTGRES_URL in the SECRET env file only.
    secret_env = (sandbox.run_dir / "secrets" / "backend.env").read_text()
    plain_env = (sandbox.run_dir / "backend.env").read_text()
    assert f"POSTGRES_URL=postgresql://convex:{sandbox.db_password}@172.30.250.34:5432?sslmode=disable&connect_timeout=30" in secret_env
    assert "POSTGRES_URL" not in plain_env and sandbox.db_password not in plain_env
    assert sandbox.instance_secret not in plain_env
    env = dict(e.split("=", 1) for e in sandbox.docker_state()["containers"]["convex-backend"]["env"])
    assert f":{sandbox.db_password}@" in env["POSTGRES_URL"]

    # Nothing secret left lying around besides the env file; modes are root-only.
    for p in sandbox.run_dir.rglob("*"):
        if p.is_file() and p != sandbox.run_dir / "secrets" / "backend.env":
            text = p.read_bytes()
            for value in secrets:
                assert value.encode() not in text, p
    for p in (sandbox.run_dir / "secrets").iterdir():
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    # The token only travels in the Authorization header.
    assert all("ya29" not in q["path"] for q in sandbox.apis.requests)


def test_secret_in_metadata_is_refused(sandbox):
    sandbox.backend_env["INSTANCE_SECRET"] = "oops"
    sandbox.publish()
    r = sandbox.run()
    assert r.rc == 1 and "secrets must never be in instance metadata" in r.stderr
    assert "oops" not in r.output


def test_password_in_metadata_url_is_refused(sandbox):
    sandbox.backend_env["POSTGRES_URL"] = "postgresql://u:hunter2@cloudsql-proxy:5432"
    sandbox.publish()
    r = sandbox.run()
    assert r.rc == 1 and "carries a password" in r.stderr
    assert "hunter2" not in r.output


def test_script_has_no_xtrace(sandbox):
    from sandbox import SCRIPT

    for line in SCRIPT.read_text().splitlines():
        code = line.split("#", 1)[0]
        assert "set -x" not in code and "set -o xtrace" not in code


def test_no_secret_is_left_in_the_shell_s_variables_after_a_run(sandbox):
    """The script keeps a secret in a variable only while it uses it. After a reconcile that reads
    every secret, the admin key last (its read-ahead answer is cut short, so the admin-key step reads
    it itself and a regex on its payload is the run's last), no variable of the shell, BASH_REMATCH
    included, holds a secret or its base64, as read from Secret Manager."""
    import base64
    import subprocess

    from sandbox import SCRIPT

    sandbox.config["DB_PASSWORD_SECRET_ID"] = "projects/test-proj/secrets/convex-dev-db-password"
    sandbox.publish()
    assert sandbox.run().rc == 0
    sandbox.apis.cut_next[ADMIN_KEY_SECRET_ID] = 1
    # `source` runs the script in this shell, so `declare -p` shows every variable it left set.
    dump = subprocess.run(["bash", "-c", 'source "$0" reconcile >/dev/null 2>&1; declare -p', str(SCRIPT)],
                          env=sandbox.env(), capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert "INSTANCE_SECRET_ID" in dump.stdout, dump.stderr  # the run went past reading the config
    assert sandbox.apis.secrets.get(ADMIN_KEY_SECRET_ID)  # and stored the key
    for value in sandbox.secret_values():
        assert value not in dump.stdout
        assert base64.b64encode(value.encode()).decode() not in dump.stdout


def test_a_run_that_dies_leaves_no_token_or_secret_file(sandbox):
    """The metadata batch writes the token's answer before a later key can end the run; whatever ends
    it, no file under /run keeps a token or a secret (an EXIT trap removes the step files)."""
    sandbox.metadata.unavailable_next["instance/attributes/convex-gcp-unit-convex-dashboard"] = 1000
    r = sandbox.run()
    assert r.rc == 1 and "unreachable while reading" in r.stderr, r.stderr
    # The EXIT trap's clean-up is quiet: a bare `return` in a trap handler returns the status from
    # before the trap (bash manual, `return`), which the ERR trap took for a failure of its own.
    assert "unexpected failure" not in r.stderr, r.stderr
    assert any(q["path"].endswith("/token") for q in sandbox.metadata.requests)  # it was read
    for path in sandbox.run_dir.parent.rglob("*"):
        if path.is_file():
            text = path.read_bytes().decode(errors="replace")
            assert not [v for v in sandbox.secret_values() if v in text], path


def test_curl_argv_never_carries_token_or_secret(sandbox):
    """Every process the script starts is visible in `ps`: wrap curl and base64 to record their argv."""
    import shutil

    log = sandbox.tmp / "argv.log"
    for tool in ("curl", "base64", "sed", "sha256sum"):
        real = shutil.which(tool, path="/usr/local/bin:/usr/bin:/bin")
        w = sandbox.bin / tool
        w.write_text(f'#!/bin/bash\nprintf "%s\\n" "{tool} $*" >>{log}\nexec {real} "$@"\n')
        w.chmod(0o755)
    sandbox.config["DB_PASSWORD_SECRET_ID"] = "projects/test-proj/secrets/convex-dev-db-password"
    sandbox.publish()
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    text = log.read_text()
    assert "curl " in text and "-K -" in text
    for value in sandbox.secret_values():
        assert value not in text


def test_instance_secret_generated_on_the_vm_when_it_has_no_version(sandbox):
    """Pulumi creates the secret without a version, so its value never enters Pulumi state."""
    import re

    from sandbox import INSTANCE_SECRET_ID

    sandbox.apis.secrets[INSTANCE_SECRET_ID] = []
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    versions = sandbox.apis.secrets[INSTANCE_SECRET_ID]
    assert len(versions) == 1 and re.fullmatch(rb"[0-9a-f]{64}", versions[0])
    generated = versions[0].decode()
    env = dict(e.split("=", 1) for e in sandbox.docker_state()["containers"]["convex-backend"]["env"])
    assert env["INSTANCE_SECRET"] == generated
    assert generated not in r.output and generated not in sandbox.all_argv_text()

    r = sandbox.run()  # the next boot reads it back and generates nothing
    assert r.rc == 0, r.stderr
    assert sandbox.apis.secrets[INSTANCE_SECRET_ID] == [generated.encode()]


def test_disabled_instance_secret_is_never_replaced(sandbox):
    from sandbox import INSTANCE_SECRET_ID

    sandbox.apis.modes[INSTANCE_SECRET_ID] = "disabled"
    before = list(sandbox.apis.secrets[INSTANCE_SECRET_ID])
    r = sandbox.run()
    assert r.rc == 1
    assert "no enabled latest version (HTTP 400)" in r.stderr and "gcloud secrets versions enable" in r.stderr
    assert sandbox.apis.secrets[INSTANCE_SECRET_ID] == before
    assert not sandbox.docker("run")


def test_instance_secret_restored_from_the_data_disk_not_reminted(sandbox):
    """A secret recreated empty must not orphan the data: Convex's own copy on the disk wins."""
    from sandbox import INSTANCE_SECRET_ID

    saved = "ab" * 32
    credentials = sandbox.mount_point / "convex" / "credentials"
    credentials.mkdir(parents=True)
    (credentials / "instance_secret").write_text(saved + "\n")
    sandbox.apis.secrets[INSTANCE_SECRET_ID] = []
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    assert sandbox.apis.secrets[INSTANCE_SECRET_ID] == [saved.encode()]
    assert "restoring the one on the data disk" in r.stderr and saved not in r.output


def test_no_new_instance_secret_over_existing_convex_data(sandbox):
    from sandbox import INSTANCE_SECRET_ID

    storage = sandbox.mount_point / "convex" / "storage"
    storage.mkdir(parents=True)
    (storage / "module.js").write_text("x")
    sandbox.apis.secrets[INSTANCE_SECRET_ID] = []
    r = sandbox.run()
    assert r.rc == 1 and "already holds Convex data" in r.stderr
    assert sandbox.apis.secrets[INSTANCE_SECRET_ID] == []
    assert not sandbox.docker("run")


def test_a_secret_is_emptied_from_its_step_file_as_soon_as_it_is_read(sandbox, booted):
    """Step files that held a secret or the token are emptied right after use (empty_now), not only
    by the EXIT trap: midway through a reconcile (at the units step, after every Secret Manager read
    but the admin key's) only the env file the backend reads holds a secret."""
    import shutil

    found = sandbox.tmp / "found.log"
    real = shutil.which("sha256sum", path="/usr/local/bin:/usr/bin:/bin")
    patterns = sandbox.tmp / "patterns"
    values = sandbox.secret_values()
    values += [base64.b64encode(v.encode()).decode() for v in values]  # Secret Manager's answers hold them so
    patterns.write_text("".join(f"{v}\n" for v in values))
    shim = sandbox.bin / "sha256sum"  # input_sums runs it at the units step
    shim.write_text(f"#!/bin/bash\ngrep -rlF -f {patterns} {sandbox.run_dir} >>{found}\nexec {real} \"$@\"\n")
    shim.chmod(0o755)
    r = sandbox.run("reconcile")
    assert r.rc == 0, r.stderr
    assert set(found.read_text().split()) == {str(sandbox.run_dir / "secrets" / "backend.env")}


def _plant_step_files(sandbox) -> dict:
    """Step files as a run in progress has them (a token, a Secret Manager answer, scratch output)."""
    planted = {sandbox.run_dir / "secrets" / "token.json": "token of the run in progress",
               sandbox.run_dir / "secrets" / "sm-response.json": "answer of the run in progress",
               sandbox.run_dir / "cmd.out": "output of the run in progress",
               sandbox.run_dir / "sqladmin.json": "instance of the run in progress"}
    for path, text in planted.items():
        path.write_text(text)
    return planted


def test_a_run_that_cannot_take_the_lock_leaves_the_holder_s_files_alone(sandbox, booted):
    """The EXIT trap that removes step files is the lock holder's: a second run that gives up waiting
    for the lock must not remove the files of the run that holds it."""
    planted = _plant_step_files(sandbox)
    flock = sandbox.bin / "flock"
    flock.write_text("#!/bin/bash\nexit 1\n")  # flock -w gave up: another run holds the lock
    flock.chmod(0o755)
    r = sandbox.run("reconcile")
    assert r.rc == 1 and "holds" in r.stderr and "lock" in r.stderr, r.stderr
    assert {path: path.read_text() for path in planted} == planted


def test_a_preflight_beside_a_run_leaves_its_files_alone(sandbox, booted):
    """A preflight takes no lock: it works in a directory of its own, removed when it ends, so it
    neither removes a running boot's step files nor records a metadata ETag as applied."""
    planted = _plant_step_files(sandbox)
    applied = (sandbox.run_dir / "applied-etag").read_text()
    sandbox.backend_env["CONVEX_EXTRA_FLAG"] = "1"  # a new ETag the running boot has not applied
    sandbox.publish()
    before = sorted(p.name for p in sandbox.run_dir.iterdir())
    r = sandbox.run("preflight")
    assert r.rc == 0, r.stderr
    assert {path: path.read_text() for path in planted} == planted
    assert (sandbox.run_dir / "applied-etag").read_text() == applied
    assert sorted(p.name for p in sandbox.run_dir.iterdir()) == before  # its own directory is gone


def test_the_read_ahead_never_writes_a_secret_through_a_link(sandbox, booted):
    """curl -o follows a symlink: the read-ahead removes its files first, so a link planted where an
    answer goes (root-only directory, but still) never receives the secret."""
    victim = sandbox.tmp / "victim"
    victim.write_text("")
    for name in ("instance-secret", "admin-key", "db-password"):
        (sandbox.run_dir / "secrets" / f"ahead.{name}.json").symlink_to(victim)
    r = sandbox.run("reconcile")
    assert r.rc == 0, r.stderr
    assert victim.read_text() == ""


def test_the_db_password_is_not_on_disk_while_a_first_boot_mints_the_instance_secret(sandbox):
    """On a first boot the instance secret has no version and is minted (od reads /dev/urandom),
    which takes a Secret Manager round trip or more: the read-ahead's DB password answer is dropped
    before that, and read when it is needed."""
    import shutil

    from sandbox import INSTANCE_SECRET_ID

    sandbox.apis.secrets[INSTANCE_SECRET_ID] = []  # as Pulumi creates it: no version
    found = sandbox.tmp / "found.log"
    real = shutil.which("od", path="/usr/local/bin:/usr/bin:/bin")
    shim = sandbox.bin / "od"
    encoded = base64.b64encode(sandbox.db_password.encode()).decode()  # as Secret Manager answers it
    shim.write_text(f"#!/bin/bash\ngrep -rlF -e {sandbox.db_password} -e {encoded} {sandbox.run_dir} >>{found}\nexec {real} \"$@\"\n")
    shim.chmod(0o755)
    r = sandbox.run()
    assert r.rc == 0, r.stderr
    assert found.exists() and found.read_text() == ""
