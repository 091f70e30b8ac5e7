"""The sandbox behaves like the real thing in time (issue 24, part 6): one boot runs with the script's
shipped defaults (no CONVEX_GCP_*_MS seam, no retry count, no token margin), against fakes that take
time to answer (tests/vm/fakes/convex.py: the proxy and Convex answer only after their start time), so
a wait that was removed or a default that broke fails here."""

from __future__ import annotations

import re

from sandbox import SCRIPT


def _default(name: str) -> int:
    return int(re.search(rf"^[A-Z_]+=\$\{{CONVEX_GCP_{name}:-(\d+)\}}", SCRIPT.read_text(), re.M).group(1))


def test_a_first_boot_with_the_shipped_defaults(sandbox):
    sandbox.shipped_defaults = True
    env = sandbox.env()
    assert not [k for k in env if k.endswith("_MS")] and "CONVEX_GCP_RETRY_ATTEMPTS" not in env
    r = sandbox.run(timeout=90)
    assert r.rc == 0, r.stderr
    poll = _default("POLL_MS")
    assert poll == 2000
    # The backend does not answer at its first poll (it connects, then binds): its wait takes a poll
    # interval of the shipped default; both waits stay well inside the shipped bounds.
    for name, bound in (("cloudsql-proxy", "PROXY_WAIT_MS"), ("convex-backend", "BACKEND_WAIT_MS")):
        m = re.search(rf"{name}: healthy after (\d+) ms \((\d+) polls\)", r.stderr)
        assert m, r.stderr
        waited, polls = int(m.group(1)), int(m.group(2))
        assert poll * (polls - 1) <= waited < _default(bound), (name, waited, polls)
        assert polls >= 2 or name == "cloudsql-proxy", (name, waited, polls)
    # The watcher gets no timing seam either: it runs with the same shipped defaults.
    (run,) = sandbox.calls("systemd-run")
    assert not [a for a in run["argv"] if re.match(r"--setenv=CONVEX_GCP_\w+_MS=", a)]
    assert "boot complete" in r.stderr and "PREFLIGHT FAIL" not in r.stderr


def test_a_backend_started_before_the_proxy_listens_is_not_healthy(sandbox):
    """What a removed readiness wait would do: the backend connects through a proxy that does not listen
    yet, exits (connection refused), and stays down until systemd starts it again."""
    sandbox.run()
    st = sandbox.docker_state()
    st["convex"]["proxy_start_s"] = 5.0  # a proxy that is slow to listen
    sandbox.set_docker(convex=st["convex"])
    sandbox.systemctl("restart", "cloudsql-proxy.service")  # Requires=: the backend is restarted with it
    c = sandbox.docker_state()["containers"]["convex-backend"]
    assert c["exit_at"] and c["ready_at"] is None, c
    assert "Connection refused" in sandbox.docker_state()["containers"]["convex-backend"]["events"][-1][1]
    assert sandbox.wait_units()
