"""The sandbox's shared first boot (conftest `booted`): a sandbox restored from it is the sandbox a
boot of its own would have left, and the next run sees no difference either."""

from __future__ import annotations

import re

import diskutil
import pytest
from sandbox import ADMIN_KEY_SECRET_ID, DB_PASSWORD_SECRET_ID, INSTANCE_SECRET_ID, Sandbox


def _normal(sb: Sandbox, text: str) -> str:
    """What legitimately differs between two sandboxes: their directory, ports, secrets and clocks."""
    known = [(str(sb.tmp), "ROOT"), (f"127.0.0.1:{sb.metadata.port}", "METADATA"), (f"127.0.0.1:{sb.apis.port}", "APIS"),
             (f"127.0.0.1:{sb.health.port}", "HEALTH"), (sb.instance_secret, "INSTANCE_SECRET"), (sb.db_password, "DB_PASSWORD")]
    known += [(v.decode(), "ADMIN_KEY") for v in sb.apis.secrets.get(ADMIN_KEY_SECRET_ID, [])]
    for value, name in known:
        text = text.replace(value, name)
    text = re.sub(r'"t[01]": [0-9.]+', '"t": T', text)
    # The fakes' timelines (fakes/convex.py): epoch seconds and log timestamps; and how many polls
    # a readiness wait took, which depends on the clock as well.
    text = re.sub(r"\b1\d{9}(\.\d+)?\b", "T", text)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", "TIME", text)
    text = re.sub(r"\(\d+ polls\)", "(N polls)", text)
    text = re.sub(r"after \d+ s\b", "after N s", text)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+0000", "TIME", text)
    text = re.sub(r"^Date: .*$", "Date: TIME", text, flags=re.M)  # the fake server's HTTP Date header
    return re.sub(r"\d+ ms", "N ms", text)


def _files(sb: Sandbox) -> dict[str, tuple[int, list[str]]]:
    """Every file the run left but the disk image (compared on its own), mode and lines; lines
    sorted because the script pulls images in parallel, so calls are logged in any order."""
    out = {}
    for path in sorted(sb.tmp.rglob("*")):
        rel = str(path.relative_to(sb.tmp))
        if rel.startswith("bin") or path == sb.disk:
            continue
        lines = sorted(_normal(sb, path.read_text(errors="replace")).splitlines()) if path.is_file() else []
        # Calls made once per poll (the proxy's readiness wait, the upgrade guard reading the journal):
        # how many depends on the clock; that they were made does not.
        polled = re.compile(r'"argv": \["(is-active|show|logs|inspect)"')
        lines = [line for i, line in enumerate(lines) if not (polled.search(line) and i and lines[i - 1] == line)]
        out[rel] = (path.stat().st_mode, lines)
    return out


def test_a_restored_first_boot_is_the_boot_and_the_next_run_sees_no_difference(sandbox, booted, _default_first_boot, tmp_path_factory):
    own = Sandbox(tmp_path_factory.mktemp("own-first-boot"))
    try:
        # The same secrets as the shared boot's, so that what is derived from them matches too.
        own.instance_secret, own.db_password = _default_first_boot.instance_secret, _default_first_boot.db_password
        own.apis.add_secret(INSTANCE_SECRET_ID, own.instance_secret.encode())
        own.apis.add_secret(DB_PASSWORD_SECRET_ID, own.db_password.encode())
        first = own.run()
        assert own.wait_units()  # the upgrade guard the boot started (the snapshot waited for it too)
        assert first.rc == booted.rc == 0, first.output
        assert _normal(own, first.output) == _normal(sandbox, booted.output)
        assert _files(own) == _files(sandbox)
        for server in ("metadata", "apis", "health"):
            made, restored = (sorted((r["method"], r["path"], r["auth"], r["flavor"]) for r in getattr(sb, server).requests)
                              for sb in (own, sandbox))
            if server == "health":  # how often a readiness wait polls depends on the clock
                made, restored = sorted(set(made)), sorted(set(restored))
            assert made and made == restored, server
        assert own.metadata.attributes == sandbox.metadata.attributes
        assert {k: len(v) for k, v in own.apis.secrets.items()} == {k: len(v) for k, v in sandbox.apis.secrets.items()}
        assert own.apis.secrets[INSTANCE_SECRET_ID] == sandbox.apis.secrets[INSTANCE_SECRET_ID]
        tokens = [(sb.metadata.tokens.current, sorted(sb.metadata.tokens.issued), sb.metadata.tokens.revoked) for sb in (own, sandbox)]
        assert tokens[0] == tokens[1]
        assert diskutil.blkid(own.disk)["TYPE"] == diskutil.blkid(sandbox.disk)["TYPE"] == "ext4"
        assert diskutil.digest(sandbox.disk) == diskutil.digest(_default_first_boot.root / "disk.img")

        # A restored sandbox lives in its own directory and talks to its own fake servers.
        assert str(_default_first_boot.root) not in sandbox.all_argv_text() + (sandbox.unit_dir / "convex-backend.service").read_text()
        again, own_again = sandbox.run(), own.run()
        assert again.rc == own_again.rc == 0, again.output
        assert _normal(sandbox, again.output) == _normal(own, own_again.output)
        assert "changed: none" in again.output and "already stored" in again.output
        assert _files(sandbox) == _files(own)
    finally:
        own.close()


def test_restored_sandboxes_share_nothing_with_each_other_or_the_snapshot(sandbox, booted, _default_first_boot, tmp_path_factory):
    other = Sandbox(tmp_path_factory.mktemp("other-restore"))
    try:
        other.restore(_default_first_boot)
        counts = lambda sb: (len(sb.calls()), len(sb.metadata.requests), len(sb.apis.requests), len(sb.health.requests),  # noqa: E731
                             len(sb.apis.secrets[ADMIN_KEY_SECRET_ID]), len(sb.metadata.tokens.issued))
        before = counts(other)
        snapshot = [len(_default_first_boot.state[name]["requests"]) for name in ("metadata", "apis", "health")]
        sandbox.clear_calls()  # empties the request lists in place
        sandbox.apis.secrets[ADMIN_KEY_SECRET_ID].append(b"changed")
        sandbox.metadata.tokens.get()  # nothing issued yet in this process's clock: the same token
        sandbox.metadata.tokens.issued["another"] = 0.0
        (sandbox.fake_root / "docker.json").write_text("{}")
        assert counts(other) == before and other.docker_state()["containers"]
        assert [len(_default_first_boot.state[name]["requests"]) for name in ("metadata", "apis", "health")] == snapshot
        assert "another" not in _default_first_boot.state["tokens"]["issued"]
    finally:
        other.close()


def test_restoring_over_changed_settings_or_after_a_run_is_refused(tmp_path_factory, _default_first_boot):
    changed = Sandbox(tmp_path_factory.mktemp("changed-settings"))
    try:
        changed.config["DASHBOARD_ENABLED"] = "false"
        with pytest.raises(AssertionError, match="settings the snapshot was made with"):
            changed.restore(_default_first_boot)
    finally:
        changed.close()
    ran = Sandbox(tmp_path_factory.mktemp("already-ran"), make_disk=False)
    try:
        assert ran.run().rc == 1  # no data disk: stops early, but it ran
        with pytest.raises(AssertionError, match="before this sandbox's own runs"):
            ran.restore(_default_first_boot)
    finally:
        ran.close()
