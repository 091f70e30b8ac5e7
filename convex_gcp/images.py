"""Pinned images: the boot image and the container tags with their digests, read from convex_gcp/pins.json
(the one file a bump changes; tools/bump.py and .github/workflows/bump.yml keep it current), and how the VM
is handed them: `repo@sha256:...`, so a preview makes no registry or image-family lookup.

Verified 2026-11-29 (fetch of the upstream repositories):
- Convex: get-convex/convex-backend tag `precompiled-2026-08-22-652b828` is commit
  652b828b5129e6cdbcaa3c20efa8d116d09ff3bf (snapshot 2026-08-22). On every push to the `release` branch,
  .github/workflows/release_self_hosted_images.yml pushes `ghcr.io/get-convex/convex-{backend,dashboard}:${{ github.sha }}`
  (a multi-arch manifest list), so the full commit SHA is the image tag of both images.
- Cloud SQL Auth Proxy: GoogleCloudPlatform/cloud-sql-proxy's newest release tag is `v2.25.3` (commit 31c3b33,
  snapshot 2026-08-20); its README ("Each image is tagged with the associated Proxy version ... without the
  leading v (e.g., 2.25.3)") gives the image tag `2.25.3`. There is no v2.26.0.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Optional

PINS_FILE = Path(__file__).with_name("pins.json")


def load_pins(path: Optional[Path] = None) -> dict[str, Any]:
    """pins.json; CONVEX_GCP_PINS names another file (tests, and the bump workflow's plan of its proposal).
    Read at each call, never at import (tests/runner.py forks programs from preloaded modules)."""
    return json.loads((path or Path(os.environ.get("CONVEX_GCP_PINS") or PINS_FILE)).read_text())


_PINS = load_pins(PINS_FILE)
# The boot image: one exact Container-Optimized OS build, never a family, so a preview never looks an image
# up and a new COS build changes the VM only through a reviewed commit (the weekly bump workflow proposes it
# from the pinned LTS family). Where and when it was checked: pins.json "cos".
COS_PROJECT = _PINS["cos"]["project"]
COS_IMAGE = _PINS["cos"]["image"]
COS_FAMILY = _PINS["cos"]["family"]

CONVEX_VERSION = "652b828b5129e6cdbcaa3c20efa8d116d09ff3bf"  # precompiled-2026-08-22-652b828
PROXY_VERSION = "2.25.3"  # release v2.25.3
# OpenTelemetry Collector contrib (has the googlemanagedprometheus exporter and the gcp resource
# detector): open-telemetry/opentelemetry-collector-releases CHANGELOG.md lists v0.138.0, and
# distributions/otelcol-contrib/.goreleaser.yaml publishes the multi-arch manifest
# ghcr.io/open-telemetry/opentelemetry-collector-releases/opentelemetry-collector-contrib:{{ .Version }}
# (the version without the v; ghcr.io, not Docker Hub and its pull limits). Its digest: pins.json.
COLLECTOR_VERSION = "0.138.0"

# Image references always carry a pinned tag: the templates cannot be used without one.
PROXY_IMAGE = "gcr.io/cloud-sql-connectors/cloud-sql-proxy:{tag}"
BACKEND_IMAGE = "ghcr.io/get-convex/convex-backend:{tag}"
DASHBOARD_IMAGE = "ghcr.io/get-convex/convex-dashboard:{tag}"
COLLECTOR_IMAGE = f"ghcr.io/open-telemetry/opentelemetry-collector-releases/opentelemetry-collector-contrib:{COLLECTOR_VERSION}"

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def by_digest(reference: str, digest: str) -> str:
    """`repo:tag` + digest -> `repo@sha256:...`: Docker pulls exactly that manifest, whatever the tag says later."""
    if not _DIGEST.fullmatch(digest or ""):
        raise ValueError(f"registry returned no sha256 digest for {reference}: {digest!r}")
    repo = reference.rsplit(":", 1)[0] if "@" not in reference else reference.split("@", 1)[0]
    return f"{repo}@{digest}"


def pinned_digest(reference: str) -> Optional[str]:
    """The digest pins.json records for `repo:tag`; None when the tag is not there or not resolved yet."""
    entry = load_pins()["images"].get(reference) or {}
    digest = entry.get("digest")
    if digest is not None and not _DIGEST.fullmatch(digest):
        raise ValueError(f"convex_gcp/pins.json: {reference} has a malformed digest {digest!r}")
    return digest


def fake_digest(reference: str) -> str:
    """A stable stand-in digest for offline runs (tools/mocks.py); never used against a registry."""
    return "sha256:" + hashlib.sha256(reference.encode()).hexdigest()
