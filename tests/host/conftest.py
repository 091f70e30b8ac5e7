"""The host tier (tests/host/README.md): a real systemd and Docker engine boot the real vm/startup.sh and
vm/units. Run it with `.venv/bin/pytest -q tests/host` (as root); the fast suite leaves this directory out
(tests/conftest.py). Tests run one at a time: each module's VM is booted once, and all share one engine
and one "Google"."""

from __future__ import annotations

import os
import shutil

import pytest

NEEDED = ("debootstrap", "docker-registry", "ip", "nsenter", "losetup", "openssl", "curl", "tar")


def pytest_configure(config):
    config.addinivalue_line("markers", "vm(**kwargs): arguments of the `vm` fixture's Vm (e.g. iam_auth=False)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def world():
    if os.geteuid() != 0:
        pytest.skip("the host tier needs root: dockerd, loop devices, network namespaces (CI runs as root)")
    from tests.doctor.conftest import _bin

    missing = [tool for tool in NEEDED if shutil.which(tool) is None]
    if missing or not os.path.exists("/usr/sbin/dockerd"):
        pytest.fail(f"the host tier needs {missing or ['dockerd']}: apt-get install docker.io debootstrap "
                    "docker-registry iproute2 util-linux openssl curl postgresql (.ci/run does)")
    _bin("initdb")
    from tests.host.vm import World

    w = World()
    yield w
    w.close()


def dump(machine) -> None:
    """What an operator would look at first, printed with a failure."""
    print("---- journalctl -u google-startup-scripts (all boots)\n"
          + machine.journal("google-startup-scripts", boot=False)[-8000:])
    print("---- docker ps -a\n" + machine.sh("docker ps -a").stdout)
    for unit in ("cloudsql-proxy", "convex-backend", "convex-dashboard", "convex-config-watch", "convex-upgrade"):
        print(f"---- journalctl -u {unit}\n" + machine.journal(unit, boot=False)[-3000:])
        if unit not in ("convex-config-watch", "convex-upgrade"):
            print(f"---- docker logs {unit}\n" + machine.logs(unit)[-3000:])


@pytest.fixture
def vm(world, tmp_path, request):
    """A VM of the test's own, not booted yet (the test may change its config first)."""
    from tests.host.vm import Vm

    marker = request.node.get_closest_marker("vm")
    machine = Vm(world, tmp_path, **(marker.kwargs if marker else {}))
    yield machine
    report = getattr(request.node, "rep_call", None)
    if machine.created and report is not None and report.failed:
        dump(machine)
    machine.close()


@pytest.fixture(scope="module")
def booted(world, tmp_path_factory):
    """One VM per module after its first boot, shared by the module's tests in file order; each test
    leaves it healthy for the next (and says so in its last assertions)."""
    yield from booted_vm(world, tmp_path_factory)


def booted_vm(world, tmp_path_factory, **vm_args):
    """A VM after its first boot, for a fixture to yield; dumped and closed if that boot fails."""
    from tests.host.vm import Vm

    machine = Vm(world, tmp_path_factory.mktemp("vm"), **vm_args)
    try:
        machine.first_boot = machine.boot()
    except BaseException:
        if machine.created:
            dump(machine)
        machine.close()
        raise
    yield machine
    machine.close()


@pytest.fixture(autouse=True)
def _dump_shared_vm_on_failure(request):
    yield
    report = getattr(request.node, "rep_call", None)
    if "booted" in request.fixturenames and report is not None and report.failed:
        dump(request.getfixturevalue("booted"))
