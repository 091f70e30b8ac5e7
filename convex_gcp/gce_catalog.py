"""Compute Engine regions, zones and machine types, checked offline.

A maintained table: refresh it when Google opens a region or a machine series (see
docs/configuration.md). At `pulumi preview`/`up` with credentials the project's own answer
(convex_gcp/placement.py) takes precedence, so a stale table never blocks a real region.

Regions and zones: Google's "Regions and zones" page (cloud.google.com/compute/docs/regions-zones),
as listed by `gcloud compute zones list`; checked 2026-11-29. Zone letters are not always
a, b, c: europe-west1 and us-east1 have b, c, d; us-central1 has a, b, c, f.
Machine types: Google's machine-family pages (cloud.google.com/compute/docs/general-purpose-machines,
/compute-optimized-machines, /machine-resource), x86 series only; checked 2026-11-29.
"""

from __future__ import annotations

import re

CHECKED = "2026-11-29"
SOURCE = "cloud.google.com/compute/docs/regions-zones and the machine-family pages"
TABLE = f"table of {CHECKED}"  # how a problem names this source

# Region → zone letters.
ZONES: dict[str, str] = {
    "africa-south1": "abc",
    "asia-east1": "abc",
    "asia-east2": "abc",
    "asia-northeast1": "abc",
    "asia-northeast2": "abc",
    "asia-northeast3": "abc",
    "asia-south1": "abc",
    "asia-south2": "abc",
    "asia-southeast1": "abc",
    "asia-southeast2": "abc",
    "australia-southeast1": "abc",
    "australia-southeast2": "abc",
    "europe-central2": "abc",
    "europe-north1": "abc",
    "europe-north2": "abc",
    "europe-southwest1": "abc",
    "europe-west1": "bcd",
    "europe-west2": "abc",
    "europe-west3": "abc",
    "europe-west4": "abc",
    "europe-west6": "abc",
    "europe-west8": "abc",
    "europe-west9": "abc",
    "europe-west10": "abc",
    "europe-west12": "abc",
    "me-central1": "abc",
    "me-central2": "abc",
    "me-west1": "abc",
    "northamerica-northeast1": "abc",
    "northamerica-northeast2": "abc",
    "northamerica-south1": "abc",
    "southamerica-east1": "abc",
    "southamerica-west1": "abc",
    "us-central1": "abcf",
    "us-east1": "bcd",
    "us-east4": "abc",
    "us-east5": "abc",
    "us-south1": "abc",
    "us-west1": "abc",
    "us-west2": "abc",
    "us-west3": "abc",
    "us-west4": "abc",
}

REGIONS = tuple(ZONES)


def zones_of(region: str) -> list[str]:
    return [f"{region}-{letter}" for letter in ZONES.get(region, "")]


# Predefined shapes per x86 series: kind → vCPU counts. Shared-core types are listed by name.
_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "e2": {"standard": (2, 4, 8, 16, 32), "highmem": (2, 4, 8, 16), "highcpu": (2, 4, 8, 16, 32)},
    "n1": {"standard": (1, 2, 4, 8, 16, 32, 64, 96), "highmem": (2, 4, 8, 16, 32, 64, 96), "highcpu": (2, 4, 8, 16, 32, 64, 96)},
    "n2": {
        "standard": (2, 4, 8, 16, 32, 48, 64, 80, 96, 128),
        "highmem": (2, 4, 8, 16, 32, 48, 64, 80, 96, 128),
        "highcpu": (2, 4, 8, 16, 32, 48, 64, 80, 96),
    },
    "n2d": {
        "standard": (2, 4, 8, 16, 32, 48, 64, 80, 96, 128, 224),
        "highmem": (2, 4, 8, 16, 32, 48, 64, 80, 96),
        "highcpu": (2, 4, 8, 16, 32, 48, 64, 80, 96, 128, 224),
    },
    "n4": {"standard": (2, 4, 8, 16, 32, 48, 64, 80), "highmem": (2, 4, 8, 16, 32, 48, 64, 80), "highcpu": (2, 4, 8, 16, 32, 48, 64, 80)},
    "t2d": {"standard": (1, 2, 4, 8, 16, 32, 48, 60)},
    "c2": {"standard": (4, 8, 16, 30, 60)},
    "c2d": {"standard": (2, 4, 8, 16, 32, 56, 112), "highmem": (2, 4, 8, 16, 32, 56, 112), "highcpu": (2, 4, 8, 16, 32, 56, 112)},
    "c3": {"standard": (4, 8, 22, 44, 88, 176), "highmem": (4, 8, 22, 44, 88, 176), "highcpu": (4, 8, 22, 44, 88, 176)},
    "c3d": {
        "standard": (4, 8, 16, 30, 60, 90, 180, 360),
        "highmem": (4, 8, 16, 30, 60, 90, 180, 360),
        "highcpu": (4, 8, 16, 30, 60, 90, 180, 360),
    },
    "c4": {
        "standard": (2, 4, 8, 16, 24, 32, 48, 96, 144, 192, 288),
        "highmem": (2, 4, 8, 16, 24, 32, 48, 96, 144, 192, 288),
        "highcpu": (2, 4, 8, 16, 24, 32, 48, 96, 144, 192, 288),
    },
}
SHARED_CORE = ("e2-micro", "e2-small", "e2-medium", "f1-micro", "g1-small")
# Series with custom machine types (<series>-custom-<vCPUs>-<MB>; N1's are plain custom-<vCPUs>-<MB>).
_CUSTOM_SERIES = ("e2", "n1", "n2", "n2d", "n4")
# Arm series: the boot image (Container-Optimized OS, convex_gcp/images.py) is x86-64.
ARM_SERIES = ("t2a", "c4a", "n4a")

_CUSTOM = re.compile(r"(?:(?P<series>[a-z0-9]+)-)?custom-(?P<vcpus>\d+)-(?P<mb>\d+)(?P<ext>-ext)?")


def predefined() -> list[str]:
    """Every predefined x86 type in the table (for "did you mean")."""
    names = list(SHARED_CORE)
    for series, kinds in _SHAPES.items():
        names += [f"{series}-{kind}-{n}" for kind, counts in kinds.items() for n in counts]
    return names


def machine_type_problem(name: str) -> tuple[str, list[str]] | None:
    """Why `name` is not a machine type, and the types most likely meant; None when it is one."""
    if name in SHARED_CORE:
        return None
    series = name.split("-", 1)[0]
    if series in ARM_SERIES:
        return f"{name} is an Arm machine type; the boot image (Container-Optimized OS) is x86-64", ["e2-medium"]
    custom = _CUSTOM.fullmatch(name)
    if custom:
        return _custom_problem(name, custom)
    match = re.fullmatch(r"([a-z0-9]+)-(standard|highmem|highcpu)-(\d+)(-lssd)?", name)
    if match and match.group(1) not in _SHAPES:
        # A series the table doesn't know may be newer than the table: it must not block a deploy when
        # the project can't be asked (fresh project, compute API not yet enabled). Google decides at create.
        return None
    if match and match.group(1) in _SHAPES and match.group(2) in _SHAPES[match.group(1)]:
        counts = _SHAPES[match.group(1)][match.group(2)]
        vcpus = int(match.group(3))
        if vcpus in counts and (not match.group(4) or match.group(1) in ("c3", "c3d", "c4")):
            return None
        below = [n for n in counts if n < vcpus][-1:]
        above = [n for n in counts if n > vcpus][:1]
        prefix = f"{match.group(1)}-{match.group(2)}"
        return f"{prefix} comes with {', '.join(map(str, counts))} vCPUs, not {vcpus}", [f"{prefix}-{n}" for n in below + above]
    return f"{name!r} is not a Compute Engine machine type", []


def _custom_problem(name: str, match: re.Match) -> tuple[str, list[str]] | None:
    series = match.group("series") or "n1"
    if series not in _CUSTOM_SERIES:
        return f"{series} has no custom machine types", []
    vcpus, mb = int(match.group("vcpus")), int(match.group("mb"))
    if mb % 256:
        fixed = name.replace(f"-{mb}", f"-{round(mb / 256) * 256}")
        return f"{mb} MB is not a multiple of 256 MB", [fixed]
    if vcpus != 1 and vcpus % 2:
        return f"{vcpus} vCPUs: custom types take 1 or an even number", [name.replace(f"custom-{vcpus}-", f"custom-{vcpus + 1}-")]
    return None


def closest_zone(zone: str, region: str) -> list[str]:
    """The zone of `region` with the same letter, when there is one."""
    letter = zone.rsplit("-", 1)[-1]
    return [z for z in zones_of(region) if z.endswith("-" + letter)] if len(letter) == 1 else []
