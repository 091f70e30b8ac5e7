"""Cloud SQL for PostgreSQL rules: tiers, editions, versions, connection limits, flags.

Sources are listed in ../shared/FACTS.md and the README's configuration reference.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

SUPPORTED_VERSIONS = ("POSTGRES_15", "POSTGRES_16", "POSTGRES_17", "POSTGRES_18")
EDITIONS = ("ENTERPRISE", "ENTERPRISE_PLUS")

# Memory of the shared-core tiers, in MB.
SHARED_CORE_TIERS = {"db-f1-micro": 614, "db-g1-small": 1740}

_CUSTOM = re.compile(r"^db-custom-(\d+)-(\d+)$")
_PERF_OPTIMIZED = re.compile(r"^db-perf-optimized-N-(\d+)$")
_PERF_OPTIMIZED_VCPUS = (2, 4, 8, 16, 32, 48, 64, 80, 96, 128)

# Superuser slots PostgreSQL keeps out of max_connections (superuser_reserved_connections).
SUPERUSER_RESERVED = 3
# Convex's own default pool size (POSTGRES_MAX_CONNECTIONS).
CONVEX_DEFAULT_POOL = 128
MIN_POOL = 4


class TierError(ValueError):
    """A tier name that Cloud SQL for PostgreSQL would reject."""


@dataclass(frozen=True)
class Tier:
    name: str
    kind: Literal["shared-core", "custom", "perf-optimized"]
    vcpus: float
    memory_mb: int

    @property
    def edition(self) -> str:
        return "ENTERPRISE_PLUS" if self.kind == "perf-optimized" else "ENTERPRISE"


def parse_tier(name: str) -> Tier:
    """Parse and check a PostgreSQL tier name; raise TierError saying what is allowed."""
    if name in SHARED_CORE_TIERS:
        return Tier(name, "shared-core", 0.2 if name == "db-f1-micro" else 0.5, SHARED_CORE_TIERS[name])
    custom = _CUSTOM.match(name)
    if custom:
        vcpus, memory_mb = int(custom.group(1)), int(custom.group(2))
        if not (vcpus == 1 or (vcpus % 2 == 0 and 2 <= vcpus <= 96)):
            raise TierError(f"{vcpus} vCPUs: a custom tier takes 1 or an even number from 2 to 96")
        if memory_mb % 256:
            raise TierError(f"{memory_mb} MB is not a multiple of 256 MB")
        low, high = math.ceil(vcpus * 0.9 * 1024), math.floor(vcpus * 6.5 * 1024)
        low = max(low, 3840)
        if not low <= memory_mb <= high:
            raise TierError(
                f"{memory_mb} MB for {vcpus} vCPU: memory must be 0.9 to 6.5 GB per vCPU "
                f"and at least 3840 MB, here {_round_up(low, 256)} to {high - high % 256} MB"
            )
        return Tier(name, "custom", vcpus, memory_mb)
    perf = _PERF_OPTIMIZED.match(name)
    if perf:
        vcpus = int(perf.group(1))
        if vcpus not in _PERF_OPTIMIZED_VCPUS:
            raise TierError(f"db-perf-optimized-N-{vcpus}: vCPUs must be one of {_PERF_OPTIMIZED_VCPUS}")
        return Tier(name, "perf-optimized", vcpus, vcpus * 8 * 1024)
    if name.startswith("db-n1-") or name.startswith("db-standard") or name.startswith("db-highmem"):
        raise TierError(f"{name} is a MySQL/SQL Server machine type; PostgreSQL takes custom tiers")
    raise TierError(f"unknown tier {name!r}")


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def edition_problem(tier: Tier, edition: str) -> str | None:
    """Why this edition cannot run this tier, or None."""
    if tier.edition != edition:
        return f"{tier.name} is a {tier.kind} tier, which runs only on {tier.edition}"
    return None


def default_max_connections(tier: Tier) -> int:
    """Cloud SQL's default max_connections for PostgreSQL, by instance memory.

    Only the shared-core rows are verified (docs quotas page); for the bands, memory exactly on a
    boundary takes the lower band, so a derived pool never exceeds the real limit. Set
    database.flags.max_connections to pin the limit and the pool together.
    """
    gb = tier.memory_mb / 1024
    if tier.name == "db-f1-micro":
        return 25
    if tier.name == "db-g1-small":
        return 50
    bands = ((6, 100), (7.5, 200), (15, 400), (30, 500), (60, 600), (120, 800))
    for upper_gb, connections in bands:
        if gb <= upper_gb:
            return connections
    return 1000


def pool_headroom(max_connections: int) -> int:
    """Connections kept free for Cloud SQL's own agents, migrations and an operator's psql."""
    return SUPERUSER_RESERVED + max(5, math.ceil(max_connections * 0.1))


def max_pool(max_connections: int) -> int:
    return max_connections - pool_headroom(max_connections)


def derived_pool(max_connections: int) -> int:
    """The Convex pool when none is configured: what fits, capped at Convex's own default."""
    return min(CONVEX_DEFAULT_POOL, max_pool(max_connections))


def database_name(instance_name: str) -> str:
    """The database Convex opens: INSTANCE_NAME with '-' replaced by '_' (crates/clusters)."""
    return instance_name.replace("-", "_")


def iam_user_name(service_account_email: str) -> str:
    """Cloud SQL's IAM user name for a service account: the email without the domain suffix."""
    return service_account_email.removesuffix(".gserviceaccount.com")


# Tiers offered for "did you mean" when a name is misspelt.
COMMON_TIERS = (
    *SHARED_CORE_TIERS,
    "db-custom-1-3840", "db-custom-2-7680", "db-custom-4-15360", "db-custom-8-30720", "db-custom-16-61440",
    *(f"db-perf-optimized-N-{n}" for n in _PERF_OPTIMIZED_VCPUS),
)


def tiers_meant(name: str) -> list[str]:
    """The valid tiers most likely meant by an invalid `name`; several when ambiguous, none when
    there is no good guess. Numbers are moved to the nearest allowed ones; MySQL's db-n1-* names
    map to the custom tier of the same shape (n1-standard: 3.75 GB per vCPU, n1-highmem: 6.5 GB)."""
    n1 = re.fullmatch(r"db-n1-(standard|highmem)-(\d+)", name)
    if n1:
        vcpus = int(n1.group(2))
        per_vcpu = 3840 if n1.group(1) == "standard" else 6656
        return [t for t in (f"db-custom-{vcpus}-{vcpus * per_vcpu}",) if _valid(t)]
    custom = _CUSTOM.match(name)
    if custom:
        vcpus, memory_mb = int(custom.group(1)), int(custom.group(2))
        counts = [1] + list(range(2, 97, 2))
        nearest = sorted(counts, key=lambda c: (abs(c - vcpus), c))
        options = [c for c in nearest if abs(c - vcpus) == abs(nearest[0] - vcpus)]
        return [f"db-custom-{c}-{_fit_memory(c, memory_mb)}" for c in options]
    perf = _PERF_OPTIMIZED.match(name)
    if perf:
        vcpus = int(perf.group(1))
        best = min(abs(n - vcpus) for n in _PERF_OPTIMIZED_VCPUS)
        return [f"db-perf-optimized-N-{n}" for n in _PERF_OPTIMIZED_VCPUS if abs(n - vcpus) == best]
    from .suggest import closest

    return closest(name, COMMON_TIERS)


def _fit_memory(vcpus: int, memory_mb: int) -> int:
    low = _round_up(max(math.ceil(vcpus * 0.9 * 1024), 3840), 256)
    high = math.floor(vcpus * 6.5 * 1024) // 256 * 256
    rounded = (memory_mb + 128) // 256 * 256
    return min(max(rounded, low), high)


def _valid(name: str) -> bool:
    try:
        parse_tier(name)
    except TierError:
        return False
    return True
