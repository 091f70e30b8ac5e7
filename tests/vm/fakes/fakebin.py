"""Recording, stateful stand-ins for docker, systemctl, systemd-run, mount, mountpoint, iptables.

Every call runs in the test process (serve_call, behind tests/fakes/standin.py);
what the harness puts first on PATH under each tool name is a small bash client
that forwards argv, $FAKE_ROOT and $CONVEX_GCP_UNIT_DIR and replays the call's
stdout, stderr and exit status. State lives in $FAKE_ROOT (JSON + files):

- every call is appended to $FAKE_ROOT/calls.jsonl as {"tool", "argv", "t0", "t1", "rc"};
- docker keeps images, networks and containers (labels, args, env read from
  --env-file like the real CLI, status) in $FAKE_ROOT/docker.json;
- knobs in docker.json: "pull_failures" {image: n} fails the next n pulls,
  "pull_fail_always" [image], "pull_delay" seconds, "admin_key_format"
  ("upstream": key only, "legacy": an "Admin key:" line then the key);
- systemd-run marks the unit active in $FAKE_ROOT/units/ (it starts nothing);
- systemctl runs the ExecStartPre/ExecStart/ExecStop lines of the units in
  $CONVEX_GCP_UNIT_DIR as loaded by the last daemon-reload, through these same
  stand-ins, and plays Restart=always lazily: each is-active/show of a unit whose
  container is gone counts a restart and runs ExecStart again;
- iptables keeps chains and rules in $FAKE_ROOT/iptables.json;
- mount records mounts in $FAKE_ROOT/mounts.json, mountpoint answers from it.
Knobs in docker.json beyond the pull ones: "sql_reachable" (false: a proxy run with
--run-connection-test exits), "logging_down" (gcplogs containers fail to start),
"run_failures" {name: n} (the next n `docker run`s of it fail).

Upstream behaviour each tool copies is named where it is played (moby daemon/daemon.go restore,
volume/mounts/linux_parser.go, daemon/logger/gcplogs/gcplogging.go; systemd.unit(5); cloud-sql-proxy
internal/proxy/proxy.go). How a call gets here: the client opens bash's /dev/tcp
(https://www.gnu.org/software/bash/manual/bash.html#Redirections) and each call is served on a thread
of its own (CPython Lib/socketserver.py ThreadingMixIn), hence the thread-local call context below.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from tests.fakes.standin import FAKE_BUG, StandInServer, shared

from convex_gcp.runtime import PROXY_IP
from fakes import convex

_call = threading.local()  # the sandbox (root, unit dir) and the output of the call this thread serves


def root() -> Path:
    return _call.root


@contextmanager
def context(fake_root: str | Path, unit_dir: str | Path = "/nonexistent"):
    """Serve calls for one sandbox on this thread; yields the (stdout, stderr) lists they write to."""
    saved = getattr(_call, "__dict__", {}).copy()
    _call.root, _call.unit_dir, _call.out, _call.err = Path(fake_root), Path(unit_dir), [], []
    try:
        yield _call.out, _call.err
    finally:
        _call.__dict__.clear()
        _call.__dict__.update(saved)


def say(text: object) -> None:
    _call.out.append(f"{text}\n")


@contextmanager
def locked():
    with open(root() / "state.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load() -> dict:
    state = root() / "docker.json"
    if state.exists():
        return settle(json.loads(state.read_text()))
    return {}


def settle(st: dict, now: float | None = None) -> dict:
    """Play the containers' timelines (fakes/convex.py) up to now: a migration step that finished
    moves the database's version, a process that exited leaves its container exited (or, --rm, gone)."""
    now = time.time() if now is None else now
    effects = []
    for c in st.get("containers", {}).values():
        end = min(now, c.get("exit_at") or now)
        for event in c.get("events", []):
            if event[2] is not None and event[0] <= end:
                effects.append((event[0], event[2]))
                event[2] = None
    for _, version in sorted(effects):
        st.setdefault("convex", {})["db_version"] = version
    for name in list(st.get("containers", {})):
        c = st["containers"][name]
        if c["status"] == "running" and c.get("exit_at") is not None and c["exit_at"] <= now:
            if "--rm" in c["opts"]:
                del st["containers"][name]
            else:
                c["status"] = "exited"
    return st


def ended(st: dict, cid: str, now: float) -> None:
    """The container's process stops now: its printing stops too (the journal keeps what it printed)."""
    for h in st.get("history", []):
        if h["id"] == cid and h.get("end") is None:
            h["end"] = now


def save(state: dict) -> None:
    tmp = root() / "docker.tmp"
    tmp.write_text(json.dumps(state, sort_keys=True))  # no indent: json's C encoder only serves indent=None
    tmp.replace(root() / "docker.json")


def defaults(state: dict) -> dict:
    for key, value in {
        "images": {},
        "networks": {},
        "containers": {},
        "pull_failures": {},
        "pull_fail_always": [],
        "pull_delay": 0.0,
        "admin_key_format": "upstream",
        "seq": 0,
    }.items():
        state.setdefault(key, value)
    return state


def err(msg: str) -> None:
    _call.err.append(msg + "\n")


# ------------------------------------------------------------------ docker --

RUN_VALUE_FLAGS = {
    "--name", "--label", "-l", "--network", "--network-alias", "--restart", "--log-driver",
    "--log-opt", "-p", "--publish", "--mount", "--env-file", "-e", "--env", "-v", "--volume",
    "--stop-signal", "--stop-timeout", "--health-cmd", "--health-interval", "--health-timeout",
    "--health-retries", "--health-start-period", "--user", "-u", "--entrypoint", "--ip",
    "--cap-drop", "--cap-add", "--security-opt", "--tmpfs",
}


def parse_env_file(path: str) -> list[str]:
    out = []
    for line in Path(path).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        out.append(line)
    return out


def render(fmt: str, c: dict) -> str:
    def repl(m: re.Match) -> str:
        expr = m.group(1).strip()
        lab = re.fullmatch(r'index \.Config\.Labels "([^"]+)"', expr)
        if lab:
            return c["labels"].get(lab.group(1), "")
        return {
            ".State.Status": c["status"],
            ".State.Running": "true" if c["status"] == "running" else "false",
            ".Id": c["id"],
            ".Name": "/" + c["name"],
            ".Config.Image": c["image"],
        }.get(expr, "<no value>")

    return re.sub(r"\{\{(.*?)\}\}", repl, fmt)


def bind_source_missing(opts: dict) -> str:
    for m in opts.get("--mount", []):
        fields = dict(f.split("=", 1) for f in m.split(",") if "=" in f)
        if fields.get("type") == "bind" and not Path(fields.get("source", "")).exists():
            return fields.get("source", "")
    return ""


def daemon_restart() -> None:
    """What dockerd does with containers at boot (moby daemon/daemon.go restore): --rm containers
    that were stopped by the shutdown are gone; --restart always ones are started again, and fail
    when a bind source is missing (on COS /mnt/disks is a tmpfs until the data disk is mounted)."""
    with locked():
        st = defaults(load())
        for name in list(st["containers"]):
            c = st["containers"][name]
            ended(st, c["id"], time.time())
            if "--rm" in c["opts"]:
                del st["containers"][name]
            elif "always" in c["opts"].get("--restart", []):
                c["status"] = "exited" if bind_source_missing(c["opts"]) else "running"
            else:
                c["status"] = "exited"
        save(st)


def life(st: dict, name: str, image: str, env: list[str]) -> dict | None:
    """The timeline of what this container prints and when it answers (fakes/convex.py)."""
    now = time.time()
    if name == "cloudsql-proxy":
        return convex.proxy_timeline(st, now)
    if name != "convex-backend":
        return None
    url = next((e.split("=", 1)[1] for e in env if e.startswith("POSTGRES_URL=")), "")
    host = url.split("@", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    reachable = bool(st.get("sql_reachable", True))
    proxy = st["containers"].get("cloudsql-proxy")
    # The proxy's address (convex_gcp/runtime.py PROXY_IP, its container's --ip) or its old network alias.
    if host in ("cloudsql-proxy", PROXY_IP) and not convex.ready(proxy, now):
        # Through the proxy before it listens: connection refused, connect_persistence fails, the
        # process exits (local_backend main.rs run_server_inner `.await?`); systemd starts it again.
        t = now + convex.knobs(st)["backend_start_s"] / 3
        return {"events": [[now, convex.line("INFO", "local_backend", "Starting a Convex backend", now), None],
                           [t, convex.line("ERROR", "local_backend", "Error: Connection refused (os error 111)", t), None]],
                "ready_at": None, "exit_at": t}
    return convex.backend_timeline(st, image, now, reachable)


def docker(argv: list[str]) -> int:
    if not argv:
        return 1
    cmd, rest = argv[0], argv[1:]
    if cmd == "info":
        with locked():
            st = defaults(load())
        if st.get("daemon_down"):
            err("Cannot connect to the Docker daemon")
            return 1
        say("fake docker")
        return 0
    if cmd == "network":
        sub, name = rest[0], rest[-1]
        with locked():
            st = defaults(load())
            if sub == "inspect":
                if name not in st["networks"]:
                    err(f"Error: No such network: {name}")
                    return 1
                net = st["networks"][name]
                if "--format" in rest:
                    say(net.get("Subnet", ""))
                else:
                    say(json.dumps([net]))
                return 0
            if sub == "create":
                if name in st["networks"]:
                    err(f"Error response from daemon: network with name {name} already exists")
                    return 1
                subnet = rest[rest.index("--subnet") + 1] if "--subnet" in rest else ""
                opts = [rest[i + 1] for i, a in enumerate(rest) if a in ("--opt", "-o")]
                for other in st["networks"].values():
                    if subnet and other.get("Subnet") == subnet:
                        err("Error response from daemon: Pool overlaps with other one on this address space")
                        return 1
                st["networks"][name] = {"Name": name, "Driver": "bridge", "Subnet": subnet, "Options": opts}
                save(st)
                say(hashlib.sha256(name.encode()).hexdigest())
                return 0
            if sub == "rm":
                if any(name in c["opts"].get("--network", []) for c in st["containers"].values()):
                    err(f"Error response from daemon: error while removing network: network {name} has active endpoints")
                    return 1
                st["networks"].pop(name, None)
                save(st)
                say(name)
                return 0
        return 1
    if cmd == "image":
        if rest and rest[0] in ("ls", "list") and "-q" in rest and "--no-trunc" in rest:
            with locked():
                st = defaults(load())
            for image_id in sorted(set(st["images"].values())):
                say(image_id)
            return 0
        if rest and rest[0] == "rm":
            image_id = rest[-1]
            with locked():
                st = defaults(load())
                refs = [ref for ref, i in st["images"].items() if i == image_id or ref == image_id]
                if not refs:
                    err(f"Error response from daemon: No such image: {image_id}")
                    return 1
                users = [c["name"] for c in st["containers"].values() if c["image"] in refs]
                if users:
                    # moby daemon/images/image_delete.go: an image a container uses is never removed without -f.
                    err(f"Error response from daemon: conflict: unable to delete {image_id[7:19]} (cannot be forced) - image is being used by running container {users[0]}")
                    return 1
                deleted = st["images"][refs[0]]
                for ref in refs:
                    del st["images"][ref]
                save(st)
            for ref in refs:
                say(f"Untagged: {ref}")
            say(f"Deleted: {deleted}")
            return 0
        if rest and rest[0] == "inspect":
            image = rest[-1]
            with locked():
                st = defaults(load())
            if image not in st["images"]:
                err(f"Error: No such image: {image}")
                return 1
            if "--format" in rest:
                say(render(rest[rest.index("--format") + 1], {"id": st["images"][image], "labels": {},
                                                                 "status": "", "name": "", "image": image}))
            else:
                say(json.dumps([{"Id": st["images"][image]}]))
            return 0
        return 1
    if cmd == "pull":
        image = rest[-1]
        with locked():
            st = defaults(load())
            delay = float(st["pull_delay"])
        time.sleep(delay)
        with locked():
            st = defaults(load())
            if image in st["pull_fail_always"]:
                err(f"Error response from daemon: Get \"https://{image.split('/')[0]}/v2/\": dial tcp: i/o timeout")
                return 1
            left = int(st["pull_failures"].get(image, 0))
            if left > 0:
                st["pull_failures"][image] = left - 1
                save(st)
                err(f"Error response from daemon: Get \"https://{image.split('/')[0]}/v2/\": net/http: TLS handshake timeout")
                return 1
            st["images"][image] = "sha256:" + hashlib.sha256(
                (image + str(st.get("image_generation", 0))).encode()).hexdigest()
            save(st)
        say(image)
        return 0
    if cmd == "inspect":
        fmt = rest[rest.index("--format") + 1] if "--format" in rest else None
        name = rest[-1]
        with locked():
            st = defaults(load())
        c = st["containers"].get(name)
        if c is None:
            err(f"Error: No such container: {name}")
            return 1
        say(render(fmt, c) if fmt else json.dumps([c]))
        return 0
    if cmd == "run":
        opts: dict[str, list[str]] = {}
        i = 0
        while i < len(rest):
            a = rest[i]
            if a in ("-d", "--detach", "--rm", "--read-only"):
                opts.setdefault(a, []).append("")
                i += 1
                continue
            if a.startswith("--") and "=" in a:
                k, v = a.split("=", 1)
                opts.setdefault(k, []).append(v)
                i += 1
                continue
            if a in RUN_VALUE_FLAGS:
                opts.setdefault(a, []).append(rest[i + 1])
                i += 2
                continue
            if a.startswith("-"):
                err(f"unknown flag: {a}")
                return 125
            break
        image, args = rest[i], rest[i + 1:]
        env: list[str] = []
        for f in opts.get("--env-file", []):
            try:
                env += parse_env_file(f)
            except OSError as exc:
                err(f"docker: open {f}: {exc}")
                return 125
        with locked():
            st = defaults(load())
            name = opts["--name"][0]
            if name in st["containers"]:
                err(f'docker: Error response from daemon: Conflict. The container name "/{name}" is already in use')
                return 125
            if image not in st["images"]:
                err(f"Unable to find image '{image}' locally (the fake refuses implicit pulls)")
                return 125
            for net in opts.get("--network", []):
                if net not in st["networks"]:
                    err(f"docker: Error response from daemon: network {net} not found.")
                    return 125
            missing = bind_source_missing(opts)
            if missing:
                # moby volume/mounts/linux_parser.go: --mount type=bind never creates its source.
                err(f'docker: Error response from daemon: invalid mount config for type "bind": bind source path does not exist: {missing}')
                return 125
            if "gcplogs" in opts.get("--log-driver", []) and st.get("logging_down"):
                # moby daemon/logger/gcplogs/gcplogging.go New(): the driver pings Cloud Logging at container
                # start and the start fails when it can't (moby/moby#31971: --restart does not retry that).
                err("docker: Error response from daemon: failed to initialize logging driver: unable to connect or authenticate with Google Cloud Logging: context deadline exceeded.")
                return 125
            left = int(st.setdefault("run_failures", {}).get(name, 0))
            if left > 0:
                st["run_failures"][name] = left - 1
                save(st)
                err("docker: Error response from daemon: failed to create task for container: context deadline exceeded")
                return 125
            st["seq"] += 1
            labels = dict(lab.split("=", 1) for lab in opts.get("--label", []))
            st["containers"][name] = {
                "id": hashlib.sha256(f"{name}{st['seq']}".encode()).hexdigest(),
                "name": name, "image": image, "image_id": st["images"][image], "args": args,
                "opts": opts, "env": env, "labels": labels, "status": "running", "seq": st["seq"],
            }
            timeline = life(st, name, image, env)
            if timeline:
                st["containers"][name].update(timeline)
                st.setdefault("history", []).append({
                    "name": name, "id": st["containers"][name]["id"], "exit_at": timeline["exit_at"], "end": None,
                    "lines": [[t, text] for t, text, _ in timeline["events"] if text]})
            if "--run-connection-test" in args and not st.get("sql_reachable", True):
                # cloud-sql-proxy internal/proxy/proxy.go Serve: with --run-connection-test a failed
                # CheckConnections logs "Connection test failed" and the proxy exits non-zero.
                err('{"severity":"ERROR","message":"Connection test failed"}')
                if "--rm" in opts:
                    del st["containers"][name]
                else:
                    st["containers"][name]["status"] = "exited"
                save(st)
                return 1
            save(st)
            if "-d" in opts or "--detach" in opts:
                say(st["containers"][name]["id"])
        return 0
    if cmd in ("stop", "start", "rm", "restart"):
        names = [a for a in rest if not a.startswith("-")]
        if cmd == "stop" and "-t" in rest:
            names = [a for a in names if a != rest[rest.index("-t") + 1]]
        done = []
        with locked():
            st = defaults(load())
            for name in names:
                if name not in st["containers"] and cmd == "rm":
                    # Real Docker 20.10.24 (the host tier's engine, tests/host): `docker rm NAME` says "Error: No
                    # such container: NAME" and exits 1; with -f it says the same and exits 0 (docker/cli
                    # 9a071a993a, in 20.10). `docker stop` of a missing one: the daemon's error, exit 1.
                    err(f"Error: No such container: {name}")
                    if "-f" in rest:
                        continue
                    return 1
                if name not in st["containers"]:
                    err(f"Error response from daemon: No such container: {name}")
                    return 1
                if cmd in ("rm", "stop"):
                    ended(st, st["containers"][name]["id"], time.time())
                if cmd == "rm":
                    if st["containers"][name]["status"] == "running" and "-f" not in rest:
                        err("cannot remove a running container")
                        return 1
                    del st["containers"][name]
                elif cmd == "stop" and "--rm" in st["containers"][name]["opts"]:
                    del st["containers"][name]  # --rm: removed once it stops
                else:
                    st["containers"][name]["status"] = "exited" if cmd == "stop" else "running"
                done.append(name)
            save(st)
        for name in done:
            say(name)
        return 0
    if cmd == "logs":
        name = rest[-1]
        with locked():
            st = defaults(load())
        c = st["containers"].get(name)
        if c is None:
            err(f"Error response from daemon: No such container: {name}")
            return 1
        now = time.time()
        for text in convex.printed(c.get("events", []), 0, min(now, c.get("exit_at") or now)):
            say(text)
        return 0
    if cmd == "exec":
        name, prog = rest[0], rest[1:]
        with locked():
            st = defaults(load())
        c = st["containers"].get(name)
        if c is None or c["status"] != "running":
            err(f"Error response from daemon: container {name} is not running")
            return 1
        if prog != ["./generate_admin_key.sh"]:
            err(f"fake docker exec: unsupported {prog}")
            return 126
        env = dict(e.split("=", 1) for e in c["env"])
        key = f"{env.get('INSTANCE_NAME', 'convex-self-hosted')}|" + hashlib.sha256(
            env.get("INSTANCE_SECRET", "").encode()).hexdigest() * 2
        if st["admin_key_format"] == "legacy":
            say("Admin key:")
        say(key)
        return 0
    if cmd == "ps":
        with locked():
            st = defaults(load())
        for c in st["containers"].values():
            if "-a" in rest or c["status"] == "running":
                say(c["name"])
        return 0
    err(f"fake docker: unsupported command {cmd}")
    return 1


# ----------------------------------------------------------------- systemd --

def sd_load() -> dict:
    f = root() / "systemd.json"
    return json.loads(f.read_text()) if f.exists() else {"loaded": {}, "units": {}}


def sd_save(sd: dict) -> None:
    tmp = root() / "systemd.tmp"
    tmp.write_text(json.dumps(sd))
    tmp.replace(root() / "systemd.json")


def unit_lines(text: str) -> list[tuple[str, str]]:
    """key=value pairs of a unit file, continuation lines joined (systemd.syntax(7))."""
    out, buf = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith(("#", ";")) and not buf:
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        line, buf = buf + line, ""
        if "=" in line and not line.startswith("["):
            k, v = line.split("=", 1)
            out.append((k.strip(), v.strip()))
    return out


def exec_line(cmdline: str, scripts: bool = False) -> int:
    """One Exec line through the stand-ins; with `scripts` (ExecStartPre=), a `bash FILE` runs for real."""
    ignore = cmdline.startswith("-")
    argv = shlex.split(cmdline.lstrip("-"))
    tool = os.path.basename(argv[0])
    if tool == "bash" and scripts:
        rc = run_script(argv)
    else:
        rc = call(tool, argv[1:]) if tool in TOOLS else 0
    return 0 if ignore else rc


def run_script(argv: list[str]) -> int:
    """A unit's `bash FILE` line (vm/isolate.sh), run for real, as systemd would, in the environment the
    sandbox gives its units ($FAKE_ROOT/unit-env.json: PATH with these stand-ins first, the test seams),
    its output kept like the journal's ($FAKE_ROOT/journal.log)."""
    env_file = root() / "unit-env.json"
    env = json.loads(env_file.read_text()) if env_file.exists() else {"PATH": os.environ.get("PATH", "")}
    with open(root() / "journal.log", "a") as journal:
        return subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=journal, stderr=journal, timeout=60).returncode


def container_running(name: str) -> bool:
    with locked():
        st = defaults(load())
    c = st["containers"].get(name)
    return bool(c) and c["status"] == "running"


@lru_cache(maxsize=256)  # systemctl calls parse the same few unit texts again and again
def unit_container(text: str) -> str:
    """The --name of the unit's ExecStart. systemd splits a command line into words with shell-like
    quoting (https://www.freedesktop.org/software/systemd/man/latest/systemd.service.html,
    "Command lines"), which shlex.split follows for these lines; the result depends on the text only."""
    for k, v in unit_lines(text):
        if k == "ExecStart":
            a = shlex.split(v)
            return a[a.index("--name") + 1] if "--name" in a else ""
    return ""


# Units whose ExecStart is a script (bash FILE), not a container: run for real, in the background,
# with the environment of the sandbox's last run (FAKE_ROOT/env.json), as systemd would run them.
_procs: dict[tuple[str, str], subprocess.Popen] = {}
_procs_lock = threading.Lock()


def script_argv(text: str) -> list[str] | None:
    for k, v in unit_lines(text):
        if k == "ExecStart":
            argv = shlex.split(v.lstrip("-"))
            return argv if os.path.basename(argv[0]) == "bash" else None
    return None


def proc_running(unit: str) -> bool:
    with _procs_lock:
        p = _procs.get((str(root()), unit))
    return p is not None and p.poll() is None


def spawn(unit: str, argv: list[str]) -> None:
    env = json.loads((root() / "env.json").read_text())
    log = open(root() / f"{unit}.log", "a")
    p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
    log.close()
    with _procs_lock:
        _procs[(str(root()), unit)] = p


def kill(fake_root: str, unit: str | None = None, wait: float = 10.0) -> None:
    """Stop a script unit's process group (all of them with no unit), as systemd's stop does."""
    with _procs_lock:
        keys = [k for k in _procs if k[0] == str(fake_root) and (unit is None or k[1] == unit)]
        procs = [_procs.pop(k) for k in keys]
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            p.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def wait_procs(fake_root: str, timeout: float = 60.0) -> bool:
    """Wait until every script unit started for this sandbox has ended by itself."""
    deadline = time.monotonic() + timeout
    while True:
        with _procs_lock:
            live = [p for k, p in _procs.items() if k[0] == str(fake_root) and p.poll() is None]
        if not live:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


RESTART_SEC_SCALE = 0.002


def auto_restart(u: dict, text: str) -> None:
    """The unit's main process is gone: "activating (auto-restart)" until RestartSec= (default 100 ms,
    systemd.service(5)) has passed, scaled (see sd_tick)."""
    restart_sec = next((float(v.rstrip("s")) for k, v in unit_lines(text) if k == "RestartSec"), 0.1)
    with locked():
        scale = float(defaults(load()).get("restart_sec_scale", RESTART_SEC_SCALE))
    u["state"], u["restart_at"] = "activating", time.time() + restart_sec * scale


def sd_start(sd: dict, unit: str) -> int:
    """Run ExecStartPre then ExecStart of the loaded unit. A failed ExecStartPre fails the start job;
    a main process that exits leaves the unit activating (auto-restart) under Restart=always."""
    text = sd["loaded"].get(unit)
    if text is None:
        err(f"Failed to start {unit}: Unit {unit} not found.")
        return 5
    u = sd["units"].setdefault(unit, {"n_restarts": 0})
    u["wanted"] = True
    if unit.endswith(".timer"):
        u["state"] = "active"  # a started timer waits for its next elapse (systemd.timer(5)); it runs nothing itself
        return 0
    for k, v in unit_lines(text):
        if k == "ExecStartPre" and exec_line(v, scripts=True) != 0:
            auto_restart(u, text)
            err(f"Job for {unit} failed because the control process exited with error code.")
            return 1
    argv = script_argv(text)
    if argv is not None:
        if not proc_running(unit):
            spawn(unit, argv)
        u["state"] = "active"
        return 0
    for k, v in unit_lines(text):
        if k == "ExecStart":
            if exec_line(v) == 0 and container_running(unit_container(text)):
                u["state"] = "active"
            else:
                auto_restart(u, text)
    return 0


def sd_stop(sd: dict, unit: str) -> None:
    u = sd["units"].setdefault(unit, {"n_restarts": 0})
    text = sd["loaded"].get(unit, "")
    if script_argv(text) is not None:
        kill(str(root()), unit)
        u["state"], u["wanted"] = "inactive", False
        return
    if u.get("state") == "active":
        for k, v in unit_lines(text):
            if k == "ExecStop":
                exec_line("-" + v)
    u["state"], u["wanted"] = "inactive", False


def sd_tick(sd: dict, unit: str) -> None:
    """Restart=always, played when someone looks, as the host tier's real systemd 252 does it
    (tests/host/test_lifecycle.py, test_runbooks.py): when the container is gone, the main process
    (`docker run --rm`, which returns only after the removal) has exited, so systemd runs ExecStop=
    (systemd.service(5): "the stop operation is always performed if the service started successfully,
    even if the processes in the service terminated on their own"; here `docker stop NAME` then fails
    with "No such container") and waits RestartSec= in "activating (auto-restart)" before starting
    it again. RestartSec is scaled by the docker.json knob "restart_sec_scale" (default
    RESTART_SEC_SCALE: 10 s is 20 ms)."""
    u = sd["units"].get(unit)
    if not u or not u.get("wanted") or unit.endswith(".timer"):
        return
    text = sd["loaded"].get(unit, "")
    if script_argv(text) is not None:
        if u.get("state") == "active" and not proc_running(unit):
            u["state"], u["wanted"] = "inactive", False  # a script unit without Restart= that ended
        return
    if u.get("state") == "active":
        if container_running(unit_container(text)):
            return
        for k, v in unit_lines(text):
            if k == "ExecStop":
                exec_line("-" + v)
        auto_restart(u, text)
    if u.get("state") == "activating" and time.time() < u.get("restart_at", 0):
        return
    u["n_restarts"] += 1
    sd_start(sd, unit)


def unit_name(a: str) -> str:
    return a if a.endswith((".service", ".target", ".timer")) else a + ".service"


def systemctl(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("-")]
    if not args:
        return 0
    cmd, names = args[0], [unit_name(a) for a in args[1:]]
    with open(root() / "systemd.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        sd = sd_load()
        try:
            return _systemctl(sd, cmd, names, argv)
        finally:
            sd_save(sd)


def _systemctl(sd: dict, cmd: str, names: list[str], argv: list[str]) -> int:
    if cmd == "daemon-reload":
        sd["loaded"] = {p.name: p.read_text() for p in _call.unit_dir.glob("*.*") if p.suffix in (".service", ".timer")} if _call.unit_dir.is_dir() else {}
        return 0
    if cmd == "is-active":
        unit = names[0]
        transient = (root() / "units" / unit).exists()
        if not transient:
            sd_tick(sd, unit)
        state = "active" if transient else sd["units"].get(unit, {}).get("state", "inactive")
        if "--quiet" not in argv:
            say(state)
        return 0 if state == "active" else 3
    if cmd == "show":
        # `show -p NAME --value UNIT`: NRestarts, or SubState as systemd names a service's states
        # (src/basic/unit-def.c service_state_table: auto-restart while it waits RestartSec=, running,
        # dead; https://www.freedesktop.org/software/systemd/man/latest/systemd.service.html).
        unit = names[-1]
        sd_tick(sd, unit)
        u = sd["units"].get(unit, {})
        prop = argv[argv.index("-p") + 1] if "-p" in argv else "NRestarts"
        if prop == "SubState":
            state = u.get("state", "inactive")
            say({"active": "running", "activating": "auto-restart"}.get(state, "dead"))
        else:
            say(u.get("n_restarts", 0))
        return 0
    if cmd in ("start", "restart"):
        for unit in names:
            if (_call.unit_dir / unit).exists() and (_call.unit_dir / unit).read_text() != sd["loaded"].get(unit):
                # systemd keeps running the loaded definition and warns that a reload is needed.
                err(f"Warning: The unit file of {unit} changed on disk. Run 'systemctl daemon-reload' to reload units.")
            if cmd == "restart":
                sd_stop(sd, unit)
            rc = sd_start(sd, unit)
            if rc:
                return rc
            if cmd == "restart":
                # systemd.unit(5) Requires=: a unit is restarted when a unit it requires is restarted explicitly.
                for other, text in sd["loaded"].items():
                    deps = " ".join(v for k, v in unit_lines(text) if k == "Requires").split()
                    if unit in deps and sd["units"].get(other, {}).get("state") == "active":
                        sd_stop(sd, other)
                        sd_start(sd, other)
        return 0
    if cmd == "stop":
        for unit in names:
            # A transient unit (systemd-run) that is stopped is gone (systemd-run(1): it exists while it runs).
            (root() / "units" / unit).unlink(missing_ok=True)
            sd_stop(sd, unit)
        return 0
    return 0


def systemd_run(argv: list[str]) -> int:
    units = root() / "units"
    units.mkdir(exist_ok=True)
    unit = next((a.split("=", 1)[1] for a in argv if a.startswith("--unit=")), "run-fake")
    if not unit.endswith(".service"):
        unit += ".service"
    (units / unit).write_text(json.dumps(argv))
    say(f"Running as unit: {unit}")
    return 0


# ------------------------------------------------------------------- mount --

def mounts_load() -> dict:
    f = root() / "mounts.json"
    return json.loads(f.read_text()) if f.exists() else {}


def mount(argv: list[str]) -> int:
    pos = []
    i = 0
    while i < len(argv):
        if argv[i] in ("-t", "-o"):
            i += 2
            continue
        pos.append(argv[i])
        i += 1
    opts = argv[argv.index("-o") + 1] if "-o" in argv else ""
    if opts.startswith("remount,") and len(pos) == 1:
        return remount(pos[0], opts.split(",", 1)[1])
    if len(pos) != 2:
        err("fake mount: need SOURCE TARGET")
        return 1
    src, target = pos
    if not Path(target).is_dir():
        err(f"mount: {target}: mount point does not exist.")
        return 32
    with locked():
        m = mounts_load()
        if os.path.realpath(target) in m:
            err(f"mount: {target}: {src} already mounted")
            return 32
        m[os.path.realpath(target)] = src
        (root() / "mounts.json").write_text(json.dumps(m))
    return 0


def remount(target: str, opts: str) -> int:
    """`mount -o remount,OPTS TARGET` of a filesystem listed in $CONVEX_GCP_MOUNTINFO's file (the
    sandbox's /proc/self/mountinfo): its super options become rw,OPTS, as the kernel shows them."""
    info = root() / "mountinfo"
    with locked():
        lines = info.read_text().splitlines() if info.exists() else []
        for i, line in enumerate(lines):
            fields = line.split()
            if len(fields) > 4 and fields[4] == target:
                lines[i] = line.rsplit(" ", 1)[0] + " rw," + opts
                info.write_text("\n".join(lines) + "\n")
                return 0
    err(f"mount: {target}: not mounted.")
    return 32


def mountpoint(argv: list[str]) -> int:
    target = [a for a in argv if not a.startswith("-")][-1]
    with locked():
        m = mounts_load()
    return 0 if os.path.realpath(target) in m else 32


def iptables(argv: list[str]) -> int:
    """The filter table only: -N, -nL/-L, -S, -C, -I [pos], -A, -D, -F, -X, -E (what vm/isolate.sh uses).
    -S prints a chain as `-N CHAIN` then its rules, builtin chains too (the real one prints `-P CHAIN
    POLICY` there: either way the first rule is the second line)."""
    f = root() / "iptables.json"
    args = [a for a in argv if a not in ("-w", "-n")]
    with locked():
        # What dockerd sets up at start (moby libnetwork setupUserChain): the chain and the FORWARD jump.
        t = json.loads(f.read_text()) if f.exists() else {"OUTPUT": [], "FORWARD": ["-j DOCKER-USER"], "DOCKER-USER": []}
        op, chain, rule = args[0], args[1] if len(args) > 1 else "", args[2:]
        if op in ("-L", "-nL", "-S"):
            if chain not in t:
                err("iptables: No chain/target/match by that name.")
                return 1
            if op == "-S":
                say(f"-N {chain}")
                for r in t[chain]:
                    say(f"-A {chain} {r}")
            return 0
        if op == "-N":
            if chain in t:
                err("iptables: Chain already exists.")
                return 1
            t[chain] = []
        elif chain not in t:
            err("iptables: No chain/target/match by that name.")
            return 1
        elif op == "-F":
            t[chain] = []
        elif op == "-X":
            if t[chain] or any(r.endswith(f"-j {chain}") for rules in t.values() for r in rules):
                err(f"iptables v1.8.9: CHAIN_DEL failed (Device or resource busy): chain {chain}")
                return 1
            del t[chain]
        elif op == "-E":
            new = rule[0]
            t[new] = t.pop(chain)
            for name, rules in t.items():
                t[name] = [r[:-len(chain)] + new if r.endswith(f"-j {chain}") else r for r in rules]
        elif op == "-I":
            pos = 1
            if rule and rule[0].isdigit():
                pos, rule = int(rule[0]), rule[1:]
            t[chain].insert(pos - 1, " ".join(rule))
        elif op == "-A":
            t[chain].append(" ".join(rule))
        elif op == "-C":
            return 0 if " ".join(rule) in t[chain] else 1
        elif op == "-D":
            if " ".join(rule) not in t[chain]:
                err("iptables: Bad rule (does a matching rule exist in that chain?).")
                return 1
            t[chain].remove(" ".join(rule))
        f.write_text(json.dumps(t))
    return 0


def journalctl(argv: list[str]) -> int:
    """`journalctl -u UNIT [--since @EPOCH] -o cat --no-pager`: what the unit's processes printed. A
    container unit's ExecStart is a foreground `docker run`, whose client copies the container's output
    to its own stdout, which systemd sends to the journal (systemd.exec(5) StandardOutput=journal, the
    default): every run of the unit is there, also those of --rm containers that are gone."""
    unit = argv[argv.index("-u") + 1] if "-u" in argv else ""
    since = 0.0
    for a in argv:
        if a.startswith("--since=@"):
            since = float(a[len("--since=@"):])
    if "--since" in argv:
        since = float(argv[argv.index("--since") + 1].lstrip("@"))  # systemd.time(7) "@" epoch seconds
    name = unit[:-len(".service")] if unit.endswith(".service") else unit
    text = sd_load()["loaded"].get(unit_name(unit), "")
    if ("StandardOutput", "null") in unit_lines(text):
        return 0  # the unit sends its processes' output nowhere: the journal has none of it
    with locked():
        st = defaults(load())
    now = time.time()
    out = []
    for h in st.get("history", []):
        if h["name"] != name:
            continue
        until = min(x for x in (now, h.get("end"), h.get("exit_at")) if x is not None)
        out += [(t, text) for t, text in h["lines"] if since <= t <= until]
    for _, text in sorted(out, key=lambda x: x[0]):
        say(text)
    return 0


TOOLS = {"docker": docker, "journalctl": journalctl, "systemctl": systemctl, "systemd-run": systemd_run, "mount": mount,
         "mountpoint": mountpoint, "iptables": iptables}


def call(tool: str, argv: list[str]) -> int:
    """Run one stand-in and record it (nested calls, e.g. systemd's ExecStart, are recorded first)."""
    t0 = time.time()
    rc = FAKE_BUG  # recorded as the client sees it when the fake raises
    try:
        rc = TOOLS[tool](argv)
    finally:
        rec = {"tool": tool, "argv": argv, "t0": t0, "t1": time.time(), "rc": rc}
        with open(root() / "calls.jsonl", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(json.dumps(rec) + "\n")
    return rc


# ------------------------------------------------------------ tool server --

def serve_call(tool: str, argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """One call from a stand-in client (tests/fakes/standin.py), run for the sandbox in its env."""
    if not env["FAKE_ROOT"]:
        return 2, "", f"{tool} stand-in: FAKE_ROOT is not set\n"
    with context(env["FAKE_ROOT"], env["CONVEX_GCP_UNIT_DIR"] or "/nonexistent") as (out, errors):
        rc = call(tool, argv)
    return rc, "".join(out), "".join(errors)


def server() -> StandInServer:
    """The stand-ins' server, one per test process (one per xdist worker), started on first use."""
    return shared(serve_call, ("FAKE_ROOT", "CONVEX_GCP_UNIT_DIR"), "tests/vm/fakes/fakebin.py")
