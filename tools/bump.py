"""Propose the next convex_gcp/pins.json: the newest Container-Optimized OS build of the pinned LTS family, and
the current digest of every pinned image tag. The weekly workflow (.github/workflows/bump.yml) runs it and opens a
pull request with the change, its plan and this tool's report; nothing reaches a stack but by that reviewed commit.

    python -m tools.bump                      # report only (Markdown on stdout)
    python -m tools.bump --write --body b.md  # also write pins.json and the pull request's body
    python -m tools.bump --add ghcr.io/get-convex/convex-backend:<sha> --write   # pin a new tag

What it applies and what it only reports:
- a newer READY, non-deprecated image in the pinned family (same milestone: an LTS family holds one) -> applied;
- a tag whose digest was never recorded (null) -> its digest is recorded (first pin);
- a tag whose registry digest differs from the recorded one (the tag was MOVED) -> reported, never applied: the
  pin keeps what was reviewed, and the observation is recorded next to it (`moved`) so the pull request shows it.

Sources for the answers it reads (tests/test_bump.py replays answers of these shapes, offline):
- Compute Engine API v1 `images.getFromFamily` (GET .../projects/cos-cloud/global/images/family/<family>) returns
  the family's newest non-deprecated image as an `Image` resource: name, family, status (READY), creationTimestamp,
  deprecated.state, architecture, selfLink. Image names carry milestone and build, `cos-125-19216-700-7` (COS docs,
  "Milestones and build numbers").
- Registry: distribution/distribution docs/spec/auth/token.md (a 401 with `WWW-Authenticate: Bearer realm=...,
  service=...,scope=...`; the token endpoint answers JSON with `token` and/or `access_token`) and
  docs/spec/api.md (`HEAD /v2/<name>/manifests/<reference>` answers `Docker-Content-Digest`). The Accept header
  asks for the OCI index / Docker manifest list first, so the digest is the multi-arch one Docker pulls by.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
PINS = ROOT / "convex_gcp" / "pins.json"
COMPUTE = "https://compute.googleapis.com/compute/v1"
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
TIMEOUT = 20  # seconds per request: a slow registry fails this run, never hangs it
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_COS = re.compile(r"cos-(\d+)-(\d+)-(\d+)-(\d+)")

# --------------------------------------------------------------------------- pure functions


def cos_build(name: str) -> tuple[int, int, int, int]:
    """`cos-125-19216-700-7` -> (125, 19216, 700, 7): milestone, then build number."""
    match = _COS.fullmatch(name)
    if not match:
        raise ValueError(f"{name!r} is not a COS image name (cos-<milestone>-<build>)")
    return tuple(int(part) for part in match.groups())  # type: ignore[return-value]


def newest_cos(image: dict[str, Any], pinned: dict[str, Any]) -> tuple[Optional[str], str]:
    """From images.getFromFamily's answer: (the image to move to, or None to stay; why)."""
    name = image.get("name", "")
    if image.get("family") != pinned["family"]:
        return None, f"the answer is of family {image.get('family')!r}, not the pinned {pinned['family']!r}"
    if image.get("status") != "READY":
        return None, f"{name} is {image.get('status')}, not READY"
    if (image.get("deprecated") or {}).get("state") in ("DEPRECATED", "OBSOLETE", "DELETED"):
        return None, f"{name} is {image['deprecated']['state']}"
    if image.get("architecture") not in (None, "X86_64"):
        return None, f"{name} is {image['architecture']}; the VM is x86-64"
    new, old = cos_build(name), cos_build(pinned["image"])
    if new[0] != old[0]:
        return None, f"{name} is milestone {new[0]}; the pinned line is {old[0]} (a new milestone is a deliberate change)"
    if new <= old:
        return None, f"{pinned['image']} is the newest build of {pinned['family']}"
    return name, f"{pinned['family']}: {pinned['image']} -> {name}"


def parse_challenge(header: str) -> dict[str, str]:
    """`Bearer realm="...",service="...",scope="..."` -> {"realm": ..., "service": ..., "scope": ...}."""
    scheme, _, params = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise ValueError(f"not a Bearer challenge: {header!r}")
    return {key.lower(): value for key, value in re.findall(r'(\w+)="([^"]*)"', params)}


def token_url(challenge: dict[str, str]) -> str:
    query = {k: challenge[k] for k in ("service", "scope") if challenge.get(k)}
    return challenge["realm"] + ("?" + urllib.parse.urlencode(query) if query else "")


def token_from(body: bytes) -> str:
    answer = json.loads(body)
    token = answer.get("token") or answer.get("access_token")
    if not token:
        raise ValueError("the token endpoint answered no token")
    return token


def split_reference(reference: str) -> tuple[str, str, str]:
    """`ghcr.io/get-convex/convex-backend:abc` -> ("ghcr.io", "get-convex/convex-backend", "abc")."""
    name, _, tag = reference.rpartition(":")
    registry, _, repository = name.partition("/")
    if not (name and tag and "." in registry and repository) or "@" in reference:
        raise ValueError(f"{reference!r} is not registry/repository:tag")
    return registry, repository, tag


def digest_from(headers: dict[str, str]) -> str:
    digest = {k.lower(): v for k, v in headers.items()}.get("docker-content-digest", "").strip()
    if not _DIGEST.fullmatch(digest):
        raise ValueError(f"the registry answered no sha256 digest ({digest!r})")
    return digest


@dataclass(frozen=True)
class Change:
    kind: str  # cos | pinned | moved | same | error
    subject: str
    old: Optional[str]
    new: Optional[str]
    note: str = ""

    @property
    def applied(self) -> bool:
        return self.kind in ("cos", "pinned")


def changes_for(pins: dict[str, Any], cos_answer: Optional[dict[str, Any]], digests: dict[str, Any]) -> list[Change]:
    """What the answers mean for pins.json. `digests` maps each pinned tag to its registry digest, or to the
    exception its lookup raised; `cos_answer` is images.getFromFamily's answer (None: not asked)."""
    found: list[Change] = []
    cos = pins["cos"]
    if cos_answer is not None:
        image, why = newest_cos(cos_answer, cos)
        found.append(Change("cos" if image else "same", f"{cos['project']}/{cos['family']}", cos["image"], image or cos["image"], why))
    for reference, entry in sorted(pins["images"].items()):
        answer = digests.get(reference)
        recorded = entry.get("digest")
        if isinstance(answer, Exception) or answer is None:
            found.append(Change("error", reference, recorded, None, str(answer or "not looked up")))
        elif recorded is None:
            found.append(Change("pinned", reference, None, answer, "first digest recorded for this tag"))
        elif answer != recorded:
            found.append(Change("moved", reference, recorded, answer, "the tag now points elsewhere: NOT applied"))
        else:
            found.append(Change("same", reference, recorded, answer))
    return found


def apply(pins: dict[str, Any], changes: list[Change], today: str) -> dict[str, Any]:
    """pins.json after the changes a pull request may carry: COS builds and first digests; a moved tag only
    records what was seen (`moved`), its digest stays."""
    new = copy.deepcopy(pins)
    for change in changes:
        if change.kind == "cos":
            new["cos"].update(image=change.new, checked=today, source=f"images.getFromFamily({new['cos']['family']}) on {today} (tools/bump.py)")
        elif change.kind == "pinned":
            new["images"][change.subject].update(digest=change.new, checked=today)
        elif change.kind == "moved":
            new["images"][change.subject]["moved"] = {"digest": change.new, "seen": today}
        elif change.kind == "same" and change.subject in new["images"]:
            new["images"][change.subject]["checked"] = today
            new["images"][change.subject].pop("moved", None)
    return new


def render(changes: list[Change]) -> str:
    """The pull request's report."""
    applied = [c for c in changes if c.applied]
    moved = [c for c in changes if c.kind == "moved"]
    errors = [c for c in changes if c.kind == "error"]
    lines = ["## Pins bump (tools/bump.py)", ""]
    if moved:
        lines += ["> **A pinned tag no longer matches its recorded digest.** Nothing was applied for it: the stacks keep "
                  "running the reviewed digest. Find out why the tag moved (a re-push of the release?) before pinning anything "
                  "else for it (`python -m tools.bump --add <image:tag> --write` after review).", ""]
    lines += ["| what | pinned | found | action |", "|---|---|---|---|"]
    for c in changes:
        action = {"cos": "applied (the group recreates the VM: docs/updates.md)", "pinned": "recorded (first pin)",
                  "moved": "**reported, NOT applied**", "same": "none", "error": "lookup failed"}[c.kind]
        lines.append(f"| `{c.subject}` | `{c.old}` | `{c.new}` | {action}{': ' + c.note if c.note and c.kind != 'same' else ''} |")
    lines += ["", f"{len(applied)} applied, {len(moved)} moved tag(s) reported, {len(errors)} lookup error(s)."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- network (not run by the tests)

Http = Callable[[str, str, dict[str, str]], tuple[int, dict[str, str], bytes]]


def http(method: str, url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers.items()), error.read()


def registry_digest(reference: str, fetch: Http = http) -> str:
    """The digest `reference` points at now: HEAD the manifest; on a 401, an anonymous token for the scope the
    challenge names, then HEAD again (token.md)."""
    registry, repository, tag = split_reference(reference)
    url = f"https://{registry}/v2/{repository}/manifests/{tag}"
    headers = {"Accept": ", ".join(MANIFEST_TYPES)}
    status, answer, _ = fetch("HEAD", url, headers)
    if status == 401:
        challenge = parse_challenge({k.lower(): v for k, v in answer.items()}.get("www-authenticate", ""))
        status, _, body = fetch("GET", token_url(challenge), {})
        if status != 200:
            raise ValueError(f"{reference}: the token endpoint answered {status}")
        headers["Authorization"] = f"Bearer {token_from(body)}"
        status, answer, _ = fetch("HEAD", url, headers)
    if status != 200:
        raise ValueError(f"{reference}: the registry answered {status} for the manifest")
    return digest_from(answer)


def cos_family_image(project: str, family: str, fetch: Http = http) -> dict[str, Any]:
    """images.getFromFamily with the caller's Google credentials (gcloud, as the workflow's auth step set up)."""
    token = subprocess.run(["gcloud", "auth", "print-access-token"], capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    status, _, body = fetch("GET", f"{COMPUTE}/projects/{project}/global/images/family/{family}", {"Authorization": f"Bearer {token}"})
    if status != 200:
        raise ValueError(f"images.getFromFamily({project}/{family}) answered {status}: {body[:300]!r}")
    return json.loads(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bump", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pins", type=Path, default=PINS)
    parser.add_argument("--write", action="store_true", help="write the proposed pins.json")
    parser.add_argument("--body", type=Path, help="also write the report (the pull request's body) here")
    parser.add_argument("--cos-json", type=Path, help="images.getFromFamily's answer from a file instead of the API")
    parser.add_argument("--no-cos", action="store_true", help="leave the boot image alone")
    parser.add_argument("--add", action="append", default=[], metavar="IMAGE:TAG", help="pin a new tag (its digest is looked up)")
    options = parser.parse_args(argv)

    pins = json.loads(options.pins.read_text())
    for reference in options.add:
        split_reference(reference)
        pins["images"].setdefault(reference, {"digest": None, "checked": None, "source": "added by tools.bump --add"})
    cos_answer = None
    if not options.no_cos and not options.cos_json:
        from tools import clis

        clis.require("tools.bump", ["gcloud"])  # its access token asks the Compute API for the family's image
    if not options.no_cos:
        cos_answer = json.loads(options.cos_json.read_text()) if options.cos_json else cos_family_image(pins["cos"]["project"], pins["cos"]["family"])
    digests: dict[str, Any] = {}
    for reference in pins["images"]:
        try:
            digests[reference] = registry_digest(reference)
        except Exception as error:  # reported per tag; the others still resolve
            digests[reference] = error
    changes = changes_for(pins, cos_answer, digests)
    report = render(changes)
    print(report)
    if options.body:
        options.body.write_text(report)
    if options.write:
        options.pins.write_text(json.dumps(apply(pins, changes, dt.date.today().isoformat()), indent=2) + "\n")
    return 1 if any(c.kind == "error" for c in changes) else 0


if __name__ == "__main__":
    sys.exit(main())
