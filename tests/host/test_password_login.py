"""A stack with `iamAuth: false` (a database password) on the host tier: its own VM, after the module of
tests/host/test_runbooks.py has closed its VM (one VM at a time: they share the metadata address)."""

from __future__ import annotations

import secrets

import pytest

from tests.host.test_runbooks import run, section, ssh_commands
from tests.host.vm import DB_PASSWORD_SECRET_ID


@pytest.mark.vm(iam_auth=False)
def test_rotate_the_database_password_as_written(vm):
    """Only stacks with iamAuth: false have a password (the section says so): a VM of its own."""
    assert "Only with `iamAuth: false`" in section("Rotate the database password")
    (reconcile,) = ssh_commands("Rotate the database password")
    assert "startup-script exit status 0" in vm.boot()
    password = "Pw" + secrets.token_hex(12)
    vm.world.postgres.sql(f"ALTER ROLE convex PASSWORD '{password}'")  # `pulumi up --replace` on the password
    with vm.apis.lock:
        vm.apis.secrets[DB_PASSWORD_SECRET_ID].append(password.encode())
    before = vm.container_id("convex-backend")
    run(vm, reconcile)
    assert vm.wait_version(60) == "standin"  # served by a backend that logged in with the new password
    assert vm.container_id("convex-backend") not in ("", before)
    assert any(password in line for line in vm.sh("cat /run/convex-gcp/secrets/backend.env").stdout.splitlines())
    assert "Failed to connect to Postgres" not in vm.logs("convex-backend")
