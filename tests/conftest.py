"""Shared fixtures: whole-program runs under the Pulumi SDK's mocks, each in a fresh process
because the SDK's mock state is process-global. The process is forked from tests.runner's server,
which has the SDK imported already; runs are cached by (stack, overrides) for the whole session,
across xdist workers.

Skips: a run that skipped tests ends by naming each one and why; with CI set (.ci/run, the
workflows) a skip is a failure, because a skipped test guards nothing.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import runner  # noqa: E402
from tools.plan import Plan, plan_from_json  # noqa: E402
from tests.fakes import standin  # noqa: E402
from tests.session import SESSION_DIR, once_per_session  # noqa: E402


SCRATCH = pytest.StashKey[tuple[str | None, str]]()

# The host tier (tests/host: real systemd and Docker, minutes, root) runs only when named on the command
# line (`pytest -q tests/host`, the README's second test command); `pytest -q` leaves it out.
HOST_TIER = ROOT / "tests" / "host"


def _host_tier_asked(config: pytest.Config) -> bool:
    for arg in config.args:
        path = Path(arg.split("::", 1)[0]).resolve()
        if path == HOST_TIER or HOST_TIER in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path == HOST_TIER and not _host_tier_asked(config):
        return True
    return None


# Scratch files (sandboxes, disk images, clusters, tmp_path) go to memory when the machine has room:
# the suite creates and deletes tens of thousands of files, and on a disk (here ext4 mounted with
# `discard`) that cost a sixth of its CPU (87 s against 73 s measured). TMPDIR or --basetemp win.
MEMORY_FS = Path("/dev/shm")
MEMORY_FS_MIN_FREE = 2 << 30  # the suite peaks at ~200 MB; pytest keeps three runs' tmp_path


def _scratch_in_memory(config: pytest.Config) -> tuple[str | None, str]:
    """(directory, why): the private directory on MEMORY_FS now in TMPDIR, or None and the reason."""
    if "TMPDIR" in os.environ or config.option.basetemp:
        return None, "TMPDIR or --basetemp is set"
    if not _is_tmpfs(MEMORY_FS):
        return None, f"{MEMORY_FS} is not a tmpfs that allows executables"  # the stand-ins and npm's binaries run from it
    room = _memory_room(MEMORY_FS)
    if room < MEMORY_FS_MIN_FREE:
        return None, f"{MEMORY_FS} or the memory behind it has {room >> 20} MiB free, under {MEMORY_FS_MIN_FREE >> 20}"
    scratch = MEMORY_FS / f"convex-gcp-tests-{os.getuid()}"
    try:
        # Others may pass through (the throwaway PostgreSQL clusters run as the postgres user, in
        # directories of their own) but not list or write it, as for /tmp's random names.
        scratch.mkdir(mode=0o711, exist_ok=True)
        info = scratch.lstat()  # in a world-writable parent: use it only if it is ours and closed
    except OSError as error:
        return None, f"cannot make {scratch}: {error.strerror}"
    if info.st_uid != os.getuid() or info.st_mode & 0o066 or not scratch.is_dir() or scratch.is_symlink():
        return None, f"{scratch} exists and is not a directory only this user can write"
    scratch.chmod(0o711)  # whatever the umask made of it
    os.environ["TMPDIR"] = str(scratch)
    tempfile.tempdir = None  # gettempdir() caches its first answer
    return str(scratch), "a tmpfs"


def _is_tmpfs(path: Path, mounts: str | None = None) -> bool:
    """A tmpfs mounted without noexec (Docker mounts its /dev/shm noexec). `mounts` is the text of
    /proc/self/mounts, read when not given."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return False
    fields = [line.split() for line in mounts.splitlines()]
    found = [f for f in fields if len(f) > 3 and f[1] == str(path)]
    # The last mount on a path is the one in effect (proc(5), /proc/[pid]/mounts).
    return bool(found) and found[-1][2] == "tmpfs" and "noexec" not in found[-1][3].split(",")


def _memory_room(path: Path) -> int:
    """Bytes a tmpfs can take: its own free space, and the memory behind it (a tmpfs larger than the
    RAM or the cgroup's limit would get the run killed rather than fail to write)."""
    stats = os.statvfs(path)
    room = [stats.f_bavail * stats.f_frsize]
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        room.append(int(meminfo["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        pass
    try:  # cgroup v2: /proc/self/cgroup is "0::/path" (cgroups(7))
        group = Path("/sys/fs/cgroup") / Path("/proc/self/cgroup").read_text().strip().split("::", 1)[1].lstrip("/")
        limit = (group / "memory.max").read_text().strip()
        if limit != "max":
            room.append(int(limit) - int((group / "memory.current").read_text()))
    except (OSError, IndexError, ValueError):
        pass
    return min(room)


def pytest_configure(config: pytest.Config) -> None:
    """On the controller (xdist workers inherit its environment): scratch files in memory when there
    is room, one directory per session where what one worker made (a program run, the template
    PostgreSQL cluster) is read by the others instead of being made again, and one program-run server."""
    if not hasattr(config, "workerinput"):
        config.stash[SCRATCH] = _scratch_in_memory(config)
        os.environ[SESSION_DIR] = tempfile.mkdtemp(prefix="convex-gcp-test-session-")
        # Traversable (not listable) by the postgres user, which reads the template cluster in it.
        os.chmod(os.environ[SESSION_DIR], 0o711)
        # One program-run server for all workers: it imports the SDK while they start and collect.
        runner.share()
        standin.compiled_client()  # built once, here, before the workers need it


def pytest_report_header(config: pytest.Config) -> list[str]:
    scratch, why = config.stash.get(SCRATCH, (None, ""))
    lines = []
    if scratch:
        lines.append(f"scratch files: {scratch} ({why}; set TMPDIR to choose another place)")
    elif why:
        lines.append(f"scratch files: the system's temp directory ({why})")
    client = standin.compiled_client()
    lines.append(f"tool stand-ins: {'the C client' if client else 'the bash client (no C compiler: slower)'}")
    return lines


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        runner.stop_sharing()
        shutil.rmtree(os.environ.pop(SESSION_DIR, ""), ignore_errors=True)


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection imported (pytest, the SDK, the test modules) lives until the run ends: frozen, it
    is left out of every later collection, which would otherwise walk all of it (Python docs, gc.freeze)."""
    gc.freeze()


def _run_shared(command: list[str]) -> tuple[int, str, str]:
    """runner.run_python once per session for this command, whichever worker asks first."""
    def run() -> tuple[int, str, str]:
        result = runner.run_python(command, cwd=ROOT, timeout=300)
        return result.returncode, result.stdout, result.stderr

    return once_per_session(hashlib.sha256(json.dumps(command).encode()).hexdigest(), run)


@lru_cache(maxsize=None)
def _run(stack: str, overrides: tuple[tuple[str, str], ...]) -> Plan:
    command = ["-m", "tools.plan", stack, "--json"]
    for key, value in overrides:
        command += ["--set", f"{key}={value}"]
    returncode, stdout, stderr = _run_shared(command)
    # Exit 1 is a configuration error, recorded in the plan (tests assert on it); anything else failed.
    if returncode not in (0, 1) or not stdout.startswith("{"):
        raise AssertionError(f"plan {stack} failed ({returncode}):\n{stderr[-4000:]}")
    plan = plan_from_json(stdout)
    assert (returncode == 1) == bool(plan.error), f"exit {returncode} with error {plan.error!r}"
    return plan


def run_plan(stack: str, **overrides: str) -> Plan:
    """Run __main__.py for a stack file; overrides are `ns:key` → value (objects as JSON text)."""
    return _run(stack, tuple(sorted((k.replace("__", ":"), v) for k, v in overrides.items())))


def run_plan_with(stack: str, overrides: dict[str, str]) -> Plan:
    return _run(stack, tuple(sorted(overrides.items())))


@pytest.fixture(scope="session")
def dev_plan() -> Plan:
    return run_plan("dev")


@pytest.fixture(scope="session")
def prod_plan() -> Plan:
    return run_plan("prod")


def stack_object(stack: str, key: str) -> dict:
    """A config object from a stack file, for tests that change one field of it."""
    from tools.plan import stack_config

    return json.loads(stack_config(stack)[f"convex-gcp:{key}"])


# --------------------------------------------------------------------------- skips


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail_skip_in_ci(report) -> None:
    if _in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI={os.environ['CI']}, where every test must run: {_skip_reason(report)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skip_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    # Module-level skips (pytest.importorskip at import) are collection reports, not test reports.
    outcome = yield
    _fail_skip_in_ci(outcome.get_result())


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Last lines of a run that skipped: which tests and why (runs on the xdist controller,
    which receives every worker's reports)."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if not hasattr(r, "wasxfail")]
    if not skipped:
        return
    terminalreporter.section(f"{len(skipped)} skipped: these tests did not run", sep="=", yellow=True, bold=True)
    for report in skipped:
        terminalreporter.write_line(f"SKIPPED {report.nodeid}: {_skip_reason(report)}")
    terminalreporter.write_line("Install what they need (README, Run the tests) or run with CI=1 to make skips fail.")


# --------------------------------------------------------------------------- parallel by default


@pytest.hookimpl(optionalhook=True)  # an xdist hook: `-p no:xdist` must still load this file
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto`: one worker more than the cores this process may run on. A worker waiting on a
    test's deliberate wait (a watcher's backoff, a token's lifetime) leaves its core to the extra one:
    on 2 cores, 3 workers took ~1 s less than 2 (26 s), 4 took 2-3 s more. xdist's own answer (None)
    where it is asked for: PYTEST_XDIST_AUTO_NUM_WORKERS, `-n logical`."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS") or config.option.numprocesses == "logical":
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return cores + 1


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """`pytest -q` spreads the tests over the machine's cores (pytest-xdist `-n auto`, see
    pytest_xdist_auto_num_workers, and `--dist worksteal`: a worker that runs out takes tests queued
    for another, so the run does not end on one worker's last slow VM tests). Set here, not in
    addopts, so that `-p no:xdist` still works; an explicit `-n N`, `-n 0` or `--dist` wins, and
    --pdb, --trace or --collect-only stay in one process. Runs before xdist's own tryfirst hook,
    which was registered earlier."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    if hasattr(config, "workerinput"):
        return  # a worker runs this hook too; it must not start workers of its own
    if _host_tier_asked(config):
        return  # one VM at a time: the host tier's tests share one engine and one "Google"
    if config.option.numprocesses is None and not (
            config.getoption("usepdb") or config.getoption("trace") or config.getoption("collectonly")):
        config.option.numprocesses = "auto"
        if config.option.dist == "no":
            config.option.dist = "worksteal"
