"""vm/isolate.sh: host and container isolation.

Real: in namespaces this test makes (`unshare --net --mount --pid --fork --mount-proc`, as root), the
script runs with the real iptables, mount and /proc, and a non-root process (setpriv, uid 65534)
tries what a VM login without sudo would: list other users' processes and read their command lines,
reach the metadata server, reach a container network. The metadata server stands in at 192.0.2.254
(TEST-NET-1, on the namespace's own loopback; CONVEX_GCP_METADATA_IP), never 169.254.169.254.

Sandbox: every container unit runs the script before its container starts (ExecStartPre=), so rules
flushed or a /proc remounted while the VM runs are back at the next (re)start, and a failing script
keeps the container from starting."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from sandbox import FORWARD_RULES, HOST_RULES

REPO = Path(__file__).resolve().parents[2]
ISOLATE = REPO / "vm" / "isolate.sh"
MD = "192.0.2.254"


def _namespaces_available() -> str:
    if os.geteuid() != 0:
        return "needs root (network and mount namespaces, iptables)"
    if not os.access("/usr/bin/python3", os.X_OK):
        return "/usr/bin/python3 is missing"
    for tool in ("unshare", "setpriv", "iptables", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install iptables iproute2 util-linux)"
    probe = subprocess.run(["unshare", "--net", "--mount", "--pid", "--fork", "--mount-proc", "iptables", "-S"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"namespaces or iptables unusable here: {probe.stderr.strip()}"
    return ""


@pytest.fixture(scope="module")
def namespaces():
    why = _namespaces_available()
    if why:
        if os.environ.get("CI"):
            raise RuntimeError(why)
        pytest.skip(why)


# Runs inside the namespaces as root. Prints `RESULT <name> <value>` lines.
DRIVER = r"""
set -u
cd "$WORK"
export PATH="$WORK/bin:$PATH" CONVEX_GCP_METADATA_IP=__MD__ CONVEX_GCP_ETC="$WORK/etc" CONVEX_GCP_UNIT_DIR="$WORK/units"
ip link set lo up
ip addr add __MD__/32 dev lo
# A container network (a bridge, as Docker's) nobody answers on: without a rule a connection there waits.
ip link add cvx-db type bridge && ip addr add 172.30.250.1/28 dev cvx-db && ip link set cvx-db up
# What dockerd sets up at start (moby libnetwork setupUserChain).
iptables -N DOCKER-USER && iptables -A FORWARD -j DOCKER-USER
"$PY" "$WORK/servers.py" & servers=$!
"$PY" -c 'import time; time.sleep(300)' --instance-secret=root-only-secret & secret=$!
for _ in $(seq 100); do [ -e "$WORK/ready" ] && break; sleep 0.05; done
as_nobody() { setpriv --reuid 65534 --regid 65534 --clear-groups "$@"; }
probe() { "$PY" "$WORK/probe.py" "$@"; }

result() { echo "RESULT $1 $2"; }
result before_http_nobody "$(as_nobody "$PY" "$WORK/probe.py" http)"
result before_cmdline_nobody "$(as_nobody cat /proc/$secret/cmdline 2>/dev/null | tr '\0' ' ' | grep -c root-only-secret)"

bash "$ISOLATE" setup >"$WORK/setup.out" 2>&1; result setup_rc $?
iptables -S >"$WORK/rules.1"
result http_nobody "$(as_nobody "$PY" "$WORK/probe.py" http)"
result http_root "$("$PY" "$WORK/probe.py" http)"
result dns_nobody "$(as_nobody "$PY" "$WORK/probe.py" dns)"
result bridge_nobody "$(as_nobody "$PY" "$WORK/probe.py" bridge)"
result bridge_root "$("$PY" "$WORK/probe.py" bridge)"
result cmdline_nobody "$(as_nobody cat /proc/$secret/cmdline 2>/dev/null | tr '\0' ' ' | grep -c root-only-secret)"
result sees_pid_nobody "$(as_nobody ls /proc | grep -cx "$secret")"
result own_pids_nobody "$(as_nobody sh -c 'ls -d /proc/[0-9]* | wc -l')"
result others_pids_nobody "$(as_nobody sh -c 'for d in /proc/[0-9]*; do [ "$(stat -c %u "$d")" = 65534 ] || echo "$d"; done | wc -l')"
result cmdline_root "$(tr '\0' ' ' </proc/$secret/cmdline | grep -c root-only-secret)"

# A second run changes nothing.
bash "$ISOLATE" >"$WORK/again.out" 2>&1; result again_rc $?
iptables -S >"$WORK/rules.2"
result again_same "$(cmp -s "$WORK/rules.1" "$WORK/rules.2" && echo yes || echo no)"

# Someone (root) flushes the rules and remounts /proc: the next unit start puts both back.
iptables -F CVX-HOST
mount -o remount,hidepid=off /proc
result hole_http_nobody "$(as_nobody "$PY" "$WORK/probe.py" http)"
result hole_sees_pid_nobody "$(as_nobody ls /proc | grep -cx "$secret")"
bash "$ISOLATE" >"$WORK/reassert.out" 2>&1; result reassert_rc $?
result reassert_http_nobody "$(as_nobody "$PY" "$WORK/probe.py" http)"
result reassert_sees_pid_nobody "$(as_nobody ls /proc | grep -cx "$secret")"
iptables -S CVX-HOST | sed "s/^/HOST /"
iptables -S CVX-FWD | sed "s/^/FWD /"
iptables -S OUTPUT | sed -n 2p | sed "s/^/OUTPUT1 /"
iptables -S DOCKER-USER | sed -n 2p | sed "s/^/DOCKERUSER1 /"

# Fail closed: an iptables that cannot write, with the chain gone.
iptables -D OUTPUT -j CVX-HOST && iptables -F CVX-HOST && iptables -X CVX-HOST
mkdir -p "$WORK/broken" && printf '#!/bin/sh\ncase "$*" in *" -N "*|*" -A "*|*" -I "*) echo "iptables: Permission denied" >&2; exit 4;; esac\nexec %s "$@"\n' "$(command -v iptables)" >"$WORK/broken/iptables" && chmod +x "$WORK/broken/iptables"
PATH="$WORK/broken:$PATH" bash "$ISOLATE" >"$WORK/broken.out" 2>&1; result broken_rc $?
kill $servers $secret 2>/dev/null
"""

SERVERS = r"""
import http.server, os, socket, socketserver, threading, sys
md = os.environ["MD"]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"token")
    def log_message(self, *a): pass
httpd = socketserver.TCPServer((md, 80), H)
threading.Thread(target=httpd.serve_forever, daemon=True).start()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind((md, 53))
open(os.path.join(os.environ["WORK"], "ready"), "w").close()
while True:
    data, addr = udp.recvfrom(512); udp.sendto(b"answer", addr)
"""

PROBE = r"""
import os, socket, sys
md = os.environ["MD"]
what = sys.argv[1]
try:
    if what == "http":
        # From another local address, as on the VM (its own address, not the server's): the REJECT's
        # ICMP answer goes to the source, which must not be the metadata address itself.
        s = socket.create_connection((md, 80), timeout=2, source_address=("127.0.0.1", 0)); s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        body = b""
        while chunk := s.recv(4096):
            body += chunk
        print("reached" if b"token" in body else "odd")
    elif what == "dns":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); s.sendto(b"q", (md, 53))
        print("answered" if s.recv(100) == b"answer" else "odd")
    elif what == "bridge":
        socket.create_connection(("172.30.250.9", 5432), timeout=1)
        print("reached")
except ConnectionRefusedError:
    print("refused")
except (socket.timeout, TimeoutError):
    print("timeout")
except OSError as error:
    print("error-" + str(error.errno))
"""


def _world_traversable(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents])


@pytest.fixture(scope="module")
def run(namespaces):
    # uid 65534 runs the probes from here: every directory above must let it through.
    base = Path(tempfile.gettempdir())
    work = Path(tempfile.mkdtemp(prefix="convex-gcp-isolate-", dir=base if _world_traversable(base) else "/tmp"))
    try:
        yield _run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(work: Path) -> dict:
    (work / "bin").mkdir()
    # No systemd here: `setup` reloads and restarts logind through this stand-in, never the host's.
    (work / "bin" / "systemctl").write_text("#!/bin/sh\necho \"$*\" >>\"$WORK/systemctl.log\"\n")
    (work / "bin" / "systemctl").chmod(0o755)
    (work / "etc").mkdir()
    (work / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (work / "units").mkdir()
    (work / "servers.py").write_text(SERVERS)
    (work / "probe.py").write_text(PROBE)
    os.chmod(work, 0o755)
    for f in ("probe.py", "servers.py"):
        (work / f).chmod(0o644)
    # A Python every uid may run (not a per-user shim or a venv under a private directory).
    env = {"PATH": os.environ["PATH"], "WORK": str(work), "MD": MD, "ISOLATE": str(ISOLATE), "PY": "/usr/bin/python3"}
    p = subprocess.run(["unshare", "--net", "--mount", "--pid", "--fork", "--mount-proc", "bash", "-c",
                        DRIVER.replace("__MD__", MD)], env=env, capture_output=True, text=True, timeout=120)
    results, chains = {}, {"HOST": [], "FWD": []}
    for line in p.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "RESULT":
            name, _, value = rest.partition(" ")
            results[name] = value
        elif kind in chains:
            chains[kind].append(rest)
        elif kind in ("OUTPUT1", "DOCKERUSER1"):
            results[kind] = rest
    logs = {f: (work / f).read_text() for f in ("setup.out", "reassert.out", "broken.out", "again.out") if (work / f).exists()}
    return {"results": results, "chains": chains, "logs": logs, "stderr": p.stderr, "work": work}


def test_a_non_root_process_sees_no_other_users_process(run):
    r = run["results"]
    assert r["before_cmdline_nobody"] == "1"  # what a VM login could read before: the secret on the command line
    assert r["setup_rc"] == "0", run["logs"]
    assert r["cmdline_nobody"] == "0" and r["sees_pid_nobody"] == "0"
    assert int(r["own_pids_nobody"]) >= 1 and r["others_pids_nobody"] == "0"
    assert r["cmdline_root"] == "1"  # root (and sudo) still sees everything


def test_a_non_root_process_reaches_the_metadata_server_only_for_dns(run):
    r = run["results"]
    assert r["before_http_nobody"] == "reached"
    assert r["http_nobody"] == "refused"
    assert r["dns_nobody"] == "answered"
    assert r["http_root"] == "reached"


def test_a_non_root_process_reaches_no_container_network(run):
    r = run["results"]
    assert r["bridge_nobody"] == "refused"
    assert r["bridge_root"] == "timeout"  # root is not refused (nothing answers on the stand-in bridge)


def test_rules_are_exactly_the_chains_the_sandbox_expects_and_jumped_to_first(run):
    spell = lambda rules: [r.replace("169.254.169.254", MD) for r in rules]  # noqa: E731
    assert run["chains"]["HOST"] == ["-N CVX-HOST", *(f"-A CVX-HOST {r}" for r in spell(HOST_RULES))]
    assert run["chains"]["FWD"] == ["-N CVX-FWD", *(f"-A CVX-FWD {r}" for r in spell(FORWARD_RULES))]
    assert run["results"]["OUTPUT1"] == "-A OUTPUT -j CVX-HOST"
    assert run["results"]["DOCKERUSER1"] == "-A DOCKER-USER -j CVX-FWD"


def test_a_second_run_changes_nothing(run):
    assert run["results"]["again_rc"] == "0" and run["results"]["again_same"] == "yes"
    assert "set" not in run["logs"]["again.out"] and "remounted" not in run["logs"]["again.out"]


def test_flushed_rules_and_a_remounted_proc_are_put_back_by_the_next_run(run):
    r = run["results"]
    assert r["hole_http_nobody"] == "reached" and r["hole_sees_pid_nobody"] == "1"  # the hole is real
    assert r["reassert_rc"] == "0"
    assert r["reassert_http_nobody"] == "refused" and r["reassert_sees_pid_nobody"] == "0"


def test_it_fails_closed_when_iptables_cannot_write(run):
    assert run["results"]["broken_rc"] == "1"
    assert "refusing to start containers" in run["logs"]["broken.out"]


def test_setup_gives_logind_the_exempt_group(run):
    group = (run["work"] / "etc" / "group").read_text()
    (line,) = [g for g in group.splitlines() if g.startswith("convex-proc:")]
    gid = line.split(":")[2]
    assert "hidepid=invisible,gid=" + gid in run["logs"]["setup.out"]
    dropin = (run["work"] / "units" / "systemd-logind.service.d" / "50-convex-proc.conf").read_text()
    assert "[Service]\nSupplementaryGroups=convex-proc\n" in dropin
    assert (run["work"] / "systemctl.log").read_text().splitlines() == ["daemon-reload", "try-restart systemd-logind.service"]


# ------------------------------------------------------------------ sandbox --

def test_every_unit_asserts_isolation_before_its_container(sandbox, booted):
    for name in ("cloudsql-proxy", "convex-backend", "convex-dashboard"):
        text = (sandbox.unit_dir / f"{name}.service").read_text()
        pre = [line for line in text.splitlines() if line.startswith("ExecStartPre=")]
        assert pre[0] == f"ExecStartPre=/bin/bash {sandbox.run_dir}/isolate.sh", name


def test_a_restarted_container_puts_flushed_rules_and_proc_back(sandbox, booted):
    sandbox.set_docker(restart_sec_scale=0)  # systemd is asked after RestartSec (fakebin.sd_tick)
    state = json.loads((sandbox.fake_root / "iptables.json").read_text())
    state["CVX-FWD"], state["CVX-HOST"] = [], []
    (sandbox.fake_root / "iptables.json").write_text(json.dumps(state))
    info = sandbox.fake_root / "mountinfo"
    info.write_text(info.read_text().replace(",hidepid=invisible", ""))
    # The backend's container exits; systemd (Restart=always) starts it again, ExecStartPre= first.
    docker = sandbox.docker_state()
    docker["containers"]["convex-backend"]["status"] = "exited"
    (sandbox.fake_root / "docker.json").write_text(json.dumps(docker))
    sandbox.systemctl("is-active", "convex-backend.service")
    assert sandbox.iptables_rules("CVX-FWD") == FORWARD_RULES and sandbox.iptables_rules("CVX-HOST") == HOST_RULES
    assert ",hidepid=invisible,gid=" in info.read_text()


def test_a_unit_whose_isolation_fails_does_not_start_its_container(sandbox, booted):
    sandbox.set_docker(restart_sec_scale=0)  # systemd is asked after RestartSec (fakebin.sd_tick)
    group = sandbox.etc / "group"
    group.write_text("".join(line for line in group.read_text().splitlines(keepends=True) if not line.startswith("convex-proc:")))
    docker = sandbox.docker_state()
    docker["containers"]["convex-backend"]["status"] = "exited"
    (sandbox.fake_root / "docker.json").write_text(json.dumps(docker))
    runs_before = len(sandbox.docker("run"))
    sandbox.systemctl("is-active", "convex-backend.service")
    assert len(sandbox.docker("run")) == runs_before
    assert sandbox.units()["convex-backend.service"]["state"] != "active"
    assert "group convex-proc is missing" in (sandbox.fake_root / "journal.log").read_text()


# ------------------------------------------------------------ database grants --

def _iam_sandbox(sandbox):
    sandbox.render(sandbox.settings.model_copy(update={"iam_auth": True}), database_user="convex-dev-vm@test-proj.iam")
    assert "convex-dev-sqlgrant@test-proj.iam.gserviceaccount.com" in sandbox.apis.actable  # the sandbox's bootstrap


def test_the_vm_grants_the_convex_role_through_the_data_api_as_the_grant_account(sandbox, tmp_path):
    """The grant step, end to end against a real PostgreSQL set up like Cloud SQL: the fake Data API runs
    what the VM sends as the account it acted as (a member of cloudsqlsuperuser, like the program's grant
    user), and Convex's start-up steps then succeed as the Convex role, which holds nothing more."""
    from tests.doctor import test_db_grants as pg

    cluster = pg.Cluster(pg.make_root())
    try:
        pg.prepare(cluster, role="convex-dev-vm@test-proj.iam", database="convex_dev", grantor="convex-dev-sqlgrant@test-proj.iam")

        def execute(sql, database, account):
            try:
                cluster.run(account.removesuffix(".gserviceaccount.com"), sql, database)
            except Exception as error:  # the database's error, as the Data API reports it
                return str(error)
            return None

        sandbox.apis.execute_sql = execute
        _iam_sandbox(sandbox)
        sandbox.publish()
        r = sandbox.run()
        assert r.rc == 0, r.stderr
        (call,) = sandbox.apis.executed
        assert call["path"] == "/v1/projects/test-proj/instances/convex-db:executeSql"
        assert call["account"] == "convex-dev-sqlgrant@test-proj.iam.gserviceaccount.com"
        assert call["database"] == "convex_dev" and call["autoIamAuthn"] is True
        pg.convex_start(cluster, "convex-dev-vm@test-proj.iam", "convex_dev")
        # The grant step runs before the backend starts.
        assert r.stderr.index("step db-grants: done") < r.stderr.index("unit convex-backend")
        # The acted-as token never reaches argv, output or a file left behind (test_secrets' checks).
        for value in sandbox.apis.acted_tokens:
            assert value not in sandbox.all_argv_text() and value not in r.output
        assert not (sandbox.run_dir / "secrets" / "grant-token.json").exists()
    finally:
        cluster.stop()


def test_a_convex_role_still_in_cloudsqlsuperuser_stops_the_boot_before_the_backend(sandbox):
    _iam_sandbox(sandbox)
    sandbox.apis.execute_sql = lambda sql, db, account: 'ERROR: role convex-dev-vm@test-proj.iam still holds more than the Convex grants'
    sandbox.publish()
    r = sandbox.run()
    assert r.rc == 1 and "granting the Convex role its privileges failed" in r.stderr and "still holds more" in r.stderr
    assert "convex-backend" not in sandbox.runs()


def test_without_the_right_to_act_as_the_grant_account_the_boot_says_to_rerun_bootstrap(sandbox):
    sandbox.apis.actable.clear()
    sandbox.render(sandbox.settings.model_copy(update={"iam_auth": True}), database_user="convex-dev-vm@test-proj.iam")
    sandbox.publish()
    r = sandbox.run()
    assert r.rc == 1 and "HTTP 403" in r.stderr and "bootstrap/bootstrap.sh gives the VM account roles/iam.serviceAccountTokenCreator" in r.stderr
    assert sandbox.apis.executed == []
