"""Pure Cloud SQL rules: tiers, editions, connection limits, pool sizing, naming."""

import pytest

from convex_gcp import cloudsql
from convex_gcp.flags import FlagError, convert_flag


@pytest.mark.parametrize(
    "name, kind, memory",
    [
        ("db-f1-micro", "shared-core", 614),
        ("db-g1-small", "shared-core", 1740),
        ("db-custom-1-3840", "custom", 3840),
        ("db-custom-2-7680", "custom", 7680),
        ("db-custom-96-638976", "custom", 638976),
        ("db-perf-optimized-N-8", "perf-optimized", 65536),
    ],
)
def test_valid_tiers(name, kind, memory):
    tier = cloudsql.parse_tier(name)
    assert (tier.kind, tier.memory_mb) == (kind, memory)


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("db-n1-standard-2", "MySQL/SQL Server"),
        ("db-custom-3-7680", "1 or an even number"),
        ("db-custom-98-7680", "1 or an even number"),
        ("db-custom-2-7000", "multiple of 256"),
        ("db-custom-1-1024", "0.9 to 6.5 GB per vCPU"),
        ("db-custom-2-14336", "0.9 to 6.5 GB per vCPU"),
        ("db-perf-optimized-N-3", "vCPUs must be one of"),
        ("postgres-large", "unknown tier"),
    ],
)
def test_invalid_tiers(name, fragment):
    with pytest.raises(cloudsql.TierError, match=fragment):
        cloudsql.parse_tier(name)


def test_edition_must_match_tier():
    assert cloudsql.edition_problem(cloudsql.parse_tier("db-custom-2-7680"), "ENTERPRISE") is None
    assert "only on ENTERPRISE" in cloudsql.edition_problem(cloudsql.parse_tier("db-g1-small"), "ENTERPRISE_PLUS")
    assert "only on ENTERPRISE_PLUS" in cloudsql.edition_problem(cloudsql.parse_tier("db-perf-optimized-N-2"), "ENTERPRISE")


@pytest.mark.parametrize(
    "tier, expected",
    [
        ("db-f1-micro", 25),
        ("db-g1-small", 50),
        ("db-custom-1-3840", 100),
        ("db-custom-1-6144", 100),  # exactly on a boundary: the lower band
        ("db-custom-1-6400", 200),
        ("db-custom-2-7680", 200),
        ("db-custom-2-8192", 400),
        ("db-custom-4-15360", 400),
        ("db-custom-4-16384", 500),
        ("db-custom-8-30720", 500),
        ("db-custom-16-61440", 600),
        ("db-custom-32-122880", 800),
        ("db-custom-32-131072", 1000),
    ],
)
def test_default_max_connections_by_memory(tier, expected):
    assert cloudsql.default_max_connections(cloudsql.parse_tier(tier)) == expected


def test_pool_keeps_reserved_and_headroom_free():
    assert cloudsql.max_pool(25) == 25 - 3 - 5
    assert cloudsql.max_pool(400) == 400 - 3 - 40
    assert cloudsql.derived_pool(25) == 17
    assert cloudsql.derived_pool(1000) == cloudsql.CONVEX_DEFAULT_POOL


def test_names():
    assert cloudsql.database_name("convex-self-hosted") == "convex_self_hosted"
    assert cloudsql.iam_user_name("convex-dev-vm@p.iam.gserviceaccount.com") == "convex-dev-vm@p.iam"


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("shared_buffers", "256MB", "32768"),
        ("shared_buffers", 32768, "32768"),
        ("effective_cache_size", "1GB", "131072"),
        ("work_mem", "4MB", "4096"),
        ("work_mem", "64kB", "64"),
        ("maintenance_work_mem", "1GB", "1048576"),
        ("max_wal_size", "2GB", "2048"),
        ("log_min_duration_statement", "30s", "30000"),
        ("log_min_duration_statement", -1, "-1"),
        ("idle_in_transaction_session_timeout", "5min", "300000"),
        ("checkpoint_timeout", "5min", "300"),
        ("log_temp_files", 0, "0"),
        ("max_connections", "200", "200"),
        ("log_lock_waits", True, "on"),
        ("log_lock_waits", "off", "off"),
        ("cloudsql.iam_authentication", "on", "on"),
        ("random_page_cost", 1.1, "1.1"),
        ("log_statement", "ddl", "ddl"),
    ],
)
def test_flag_conversion(flag, value, expected):
    assert convert_flag(flag, value) == expected


@pytest.mark.parametrize(
    "flag, value, fragment",
    [
        ("shared_buffers", "100kB", "whole number of 8kB"),
        ("shared_buffers", "256mb", "not a PostgreSQL memory unit"),
        ("work_mem", "10s", "not a PostgreSQL memory unit"),
        ("statement_timeout", "1GB", "not a PostgreSQL time unit"),
        ("max_connections", "1GB", "not a whole number"),
        ("max_connections", 5, "out of range"),
        ("log_lock_waits", "maybe", "not a boolean"),
        ("work_mem", True, "is a boolean"),
        ("log_statement", "everything", "not allowed"),
        ("no_such_flag", 1, "unknown flag"),
    ],
)
def test_flag_errors(flag, value, fragment):
    with pytest.raises(FlagError, match=fragment):
        convert_flag(flag, value)
