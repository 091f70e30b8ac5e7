"""Recording, stateful stand-ins for docker, systemctl, systemd-run, mount, mountpoint.

One multi-call program: the harness symlinks it under each tool name in a
directory put first on PATH. State lives in $FAKE_ROOT (JSON + files):

- every call is appended to $FAKE_ROOT/calls.jsonl as {"tool", "argv", "t0", "t1", "rc"};
- docker keeps images, networks and containers (labels, args, env read from
  --env-file like the real CLI, status) in $FAKE_ROOT/docker.json;
- knobs in docker.json: "pull_failures" {image: n} fails the next n pulls,
  "pull_fail_always" [image], "pull_delay" seconds, "admin_key_format"
  ("upstream": key only, "legacy": an "Admin key:" line then the key);
- systemd-run marks the unit active in $FAKE_ROOT/units/ (it starts nothing);
- mount records mounts in $FAKE_ROOT/mounts.json, mountpoint answers from it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(os.environ["FAKE_ROOT"])
STATE = ROOT / "docker.json"
LOCK = ROOT / "state.lock"


@contextmanager
def locked():
    with open(LOCK, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load() -> dict:
    if STATE.exists():
        return json.loads(STATE.read_text())
    return {}


def save(state: dict) -> None:
    tmp = STATE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    tmp.replace(STATE)


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
    sys.stderr.write(msg + "\n")


# ------------------------------------------------------------------ docker --

RUN_VALUE_FLAGS = {
    "--name", "--label", "-l", "--network", "--network-alias", "--restart", "--log-driver",
    "--log-opt", "-p", "--publish", "--mount", "--env-file", "-e", "--env", "-v", "--volume",
    "--stop-signal", "--stop-timeout", "--health-cmd", "--health-interval", "--health-timeout",
    "--health-retries", "--health-start-period", "--user", "-u", "--entrypoint",
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
        print("fake docker")
        return 0
    if cmd == "network":
        sub, name = rest[0], rest[-1]
        with locked():
            st = defaults(load())
            if sub == "inspect":
                if name in st["networks"]:
                    print(json.dumps([st["networks"][name]]))
                    return 0
                err(f"Error: No such network: {name}")
                return 1
            if sub == "create":
                if name in st["networks"]:
                    err(f"network with name {name} already exists")
                    return 1
                st["networks"][name] = {"Name": name, "Driver": "bridge"}
                save(st)
                print(hashlib.sha256(name.encode()).hexdigest())
                return 0
        return 1
    if cmd == "image":
        if rest and rest[0] == "inspect":
            image = rest[-1]
            with locked():
                st = defaults(load())
            if image not in st["images"]:
                err(f"Error: No such image: {image}")
                return 1
            if "--format" in rest:
                print(render(rest[rest.index("--format") + 1], {"id": st["images"][image], "labels": {},
                                                                 "status": "", "name": "", "image": image}))
            else:
                print(json.dumps([{"Id": st["images"][image]}]))
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
        print(image)
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
        print(render(fmt, c) if fmt else json.dumps([c]))
        return 0
    if cmd == "run":
        opts: dict[str, list[str]] = {}
        i = 0
        while i < len(rest):
            a = rest[i]
            if a == "-d" or a == "--detach":
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
            st["seq"] += 1
            labels = dict(lab.split("=", 1) for lab in opts.get("--label", []))
            st["containers"][name] = {
                "id": hashlib.sha256(f"{name}{st['seq']}".encode()).hexdigest(),
                "name": name, "image": image, "image_id": st["images"][image], "args": args,
                "opts": opts, "env": env, "labels": labels, "status": "running", "seq": st["seq"],
            }
            save(st)
            print(st["containers"][name]["id"])
        return 0
    if cmd in ("stop", "start", "rm", "restart"):
        names = [a for a in rest if not a.startswith("-")]
        if cmd == "stop" and "-t" in rest:
            names = [a for a in names if a != rest[rest.index("-t") + 1]]
        with locked():
            st = defaults(load())
            for name in names:
                if name not in st["containers"]:
                    err(f"Error response from daemon: No such container: {name}")
                    return 1
                if cmd == "rm":
                    if st["containers"][name]["status"] == "running" and "-f" not in rest:
                        err("cannot remove a running container")
                        return 1
                    del st["containers"][name]
                else:
                    st["containers"][name]["status"] = "exited" if cmd == "stop" else "running"
            save(st)
        for name in names:
            print(name)
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
            print("Admin key:")
        print(key)
        return 0
    if cmd == "ps":
        with locked():
            st = defaults(load())
        for c in st["containers"].values():
            if "-a" in rest or c["status"] == "running":
                print(c["name"])
        return 0
    err(f"fake docker: unsupported command {cmd}")
    return 1


# ----------------------------------------------------------------- systemd --

def systemctl(argv: list[str]) -> int:
    units = ROOT / "units"
    args = [a for a in argv if not a.startswith("-")]
    if args and args[0] == "is-active":
        unit = args[1] if args[1].endswith(".service") else args[1] + ".service"
        active = (units / unit).exists()
        if "--quiet" not in argv:
            print("active" if active else "inactive")
        return 0 if active else 3
    return 0


def systemd_run(argv: list[str]) -> int:
    units = ROOT / "units"
    units.mkdir(exist_ok=True)
    unit = next((a.split("=", 1)[1] for a in argv if a.startswith("--unit=")), "run-fake")
    if not unit.endswith(".service"):
        unit += ".service"
    (units / unit).write_text(json.dumps(argv))
    print(f"Running as unit: {unit}")
    return 0


# ------------------------------------------------------------------- mount --

def mounts_load() -> dict:
    f = ROOT / "mounts.json"
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
        (ROOT / "mounts.json").write_text(json.dumps(m))
    return 0


def mountpoint(argv: list[str]) -> int:
    target = [a for a in argv if not a.startswith("-")][-1]
    with locked():
        m = mounts_load()
    return 0 if os.path.realpath(target) in m else 32


TOOLS = {"docker": docker, "systemctl": systemctl, "systemd-run": systemd_run, "mount": mount,
         "mountpoint": mountpoint}


def main(tool: str | None = None) -> int:
    tool = tool or os.path.basename(sys.argv[0])
    argv = sys.argv[1:]
    t0 = time.time()
    rc = 1
    try:
        rc = TOOLS[tool](argv)
    finally:
        rec = {"tool": tool, "argv": argv, "t0": t0, "t1": time.time(), "rc": rc}
        with open(ROOT / "calls.jsonl", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(json.dumps(rec) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
