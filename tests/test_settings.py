"""Settings: every rule fails with the key path, the reason, what is allowed and the fix."""

from __future__ import annotations

import json

import pytest

from convex_gcp.settings import ConfigError, load_settings, set_line
from tools.plan import stack_config


def config(stack: str = "dev", **changes) -> dict[str, str]:
    """The stack file's config with object fields changed: database={"tier": ...} merges."""
    result = stack_config(stack)
    for key, value in changes.items():
        full = key if ":" in key else f"convex-gcp:{key}"
        if isinstance(value, dict):
            merged = json.loads(result.get(full, "{}"))
            merged.update(value)
            result[full] = json.dumps(merged)
        elif value is None:
            result.pop(full, None)
        else:
            result[full] = value if isinstance(value, str) else json.dumps(value)
    return result


def problems(stack: str = "dev", **changes):
    with pytest.raises(ConfigError) as caught:
        load_settings(config(stack, **changes), stack)
    return caught.value.problems


def one_problem(stack: str = "dev", **changes):
    found = problems(stack, **changes)
    assert len(found) == 1, [p.render() for p in found]
    return found[0]


def test_stack_files_are_valid():
    dev = load_settings(config("dev"), "dev")
    prod = load_settings(config("prod"), "prod")
    assert dev.environment == "dev" and prod.environment == "prod"
    assert dev.pool_size == 42  # db-g1-small: 50 - 3 reserved - 5 headroom
    assert prod.database_flags["cloudsql.iam_authentication"] == "on"


def test_message_names_path_reason_allowed_and_fix():
    problem = one_problem(database={"tier": "db-custom-3-7680"})
    text = problem.render()
    assert problem.path == "convex-gcp:database.tier"
    assert "1 or an even number" in problem.reason
    assert "db-custom-<vCPUs>-<MB>" in problem.allowed
    # 3 vCPUs: 2 and 4 are equally near and both fit 7680 MB, so both are offered.
    assert problem.fix.splitlines() == [
        "no single likely value; run one of:",
        "pulumi config set --path 'convex-gcp:database.tier' db-custom-2-7680",
        "pulumi config set --path 'convex-gcp:database.tier' db-custom-4-7680",
    ]
    assert text.startswith("convex-gcp:database.tier: ")
    assert "\n             pulumi config set --path 'convex-gcp:database.tier' db-custom-4-7680" in text


def test_all_problems_reported_together():
    found = problems(database={"tier": "db-n1-standard-1", "availability": "MULTI"}, vm={"machineType": "E2 medium"})
    assert {p.path for p in found} == {"convex-gcp:database.tier", "convex-gcp:database.availability", "convex-gcp:vm.machineType"}


def test_error_message_says_nothing_was_created():
    with pytest.raises(ConfigError, match="nothing was created"):
        load_settings(config(database={"tier": "db-n1-standard-1"}), "dev")


@pytest.mark.parametrize(
    "changes, path, reason, fix",
    [
        ({"convex-gcp:databse": "{}"}, "convex-gcp:databse", "did you mean 'database'", "pulumi config rm 'convex-gcp:databse'"),
        ({"database": {"tierr": "db-g1-small"}}, "convex-gcp:database.tierr", "did you mean 'tier'", "--path 'convex-gcp:database.tier' db-g1-small"),
        ({"vm": {"machinType": "e2-small"}}, "convex-gcp:vm.machinType", "did you mean 'machineType'", "'convex-gcp:vm.machineType' e2-small"),
    ],
)
def test_unknown_keys_suggest(changes, path, reason, fix):
    problem = one_problem(**changes)
    assert problem.path == path and reason in problem.reason and fix in problem.fix


@pytest.mark.parametrize("tier", ["db-g1-small", "db-custom-2-7680"])
def test_edition_consistent_with_tier(tier):
    problem = one_problem(database={"tier": tier, "edition": "ENTERPRISE_PLUS"})
    assert problem.path == "convex-gcp:database.edition"
    assert "runs only on ENTERPRISE" in problem.reason
    assert problem.fix.endswith("'convex-gcp:database.edition' ENTERPRISE")


def test_perf_optimized_needs_enterprise_plus():
    problem = one_problem(database={"tier": "db-perf-optimized-N-2", "edition": "ENTERPRISE"})
    assert problem.fix.endswith("ENTERPRISE_PLUS")


@pytest.mark.parametrize("version", ["POSTGRES_14", "POSTGRES_19", "MYSQL_8_0"])
def test_versions_15_to_18(version):
    problem = one_problem(database={"version": version})
    assert problem.path == "convex-gcp:database.version"
    assert "POSTGRES_15" in problem.allowed and "POSTGRES_18" in problem.allowed


def test_version_number_is_accepted():
    assert load_settings(config(database={"version": 16}), "dev").database.version == "POSTGRES_16"


@pytest.mark.parametrize(
    "flags, path, reason",
    [
        ({"shared_bufers": "1GB"}, "convex-gcp:database.flags.shared_bufers", "did you mean 'shared_buffers'"),
        ({"work_mem": "4mb"}, "convex-gcp:database.flags.work_mem", "not a PostgreSQL memory unit"),
        ({"max_connections": "lots"}, "convex-gcp:database.flags.max_connections", "not a number"),
        ({"shared_buffers": "1500MB"}, "convex-gcp:database.flags.shared_buffers", "more than 60%"),
    ],
)
def test_flag_rules(flags, path, reason):
    problem = one_problem(database={"flags": flags})
    assert problem.path == path and reason in problem.reason
    assert problem.fix.startswith("pulumi config")


def test_flags_sent_as_integers_in_base_units():
    settings = load_settings(config(database={"tier": "db-custom-2-7680", "flags": {"shared_buffers": "256MB", "effective_cache_size": "1GB", "statement_timeout": "30s"}}), "dev")
    assert settings.database_flags == {"effective_cache_size": "131072", "shared_buffers": "32768", "statement_timeout": "30000",
                                       "cloudsql.iam_authentication": "on"}  # dev logs in with IAM, as prod


def test_iam_auth_forces_its_flag_on():
    assert load_settings(config(iamAuth="true"), "dev").database_flags["cloudsql.iam_authentication"] == "on"
    problem = one_problem(iamAuth="true", database={"flags": {"cloudsql.iam_authentication": "off"}})
    assert "IAM login needs this flag on" in problem.reason


def test_pool_derived_from_flag_or_tier_default():
    assert load_settings(config(database={"tier": "db-f1-micro"}), "dev").pool_size == 17
    assert load_settings(config(database={"tier": "db-g1-small", "flags": {"max_connections": 100}}), "dev").pool_size == 87
    assert load_settings(config(convex={"poolSize": 30}), "dev").pool_size == 30


def test_pool_that_does_not_fit_is_rejected():
    problem = one_problem(convex={"poolSize": 45})
    assert problem.path == "convex-gcp:convex.poolSize"
    assert "max_connections 50" in problem.reason and "1 to 42" in problem.allowed
    assert problem.fix == "pulumi config set --path 'convex-gcp:convex.poolSize' 42"


def test_pool_checked_against_max_connections_flag():
    problem = one_problem(database={"flags": {"max_connections": 20}}, convex={"poolSize": 15})
    assert "database.flags.max_connections" in problem.reason


def test_zone_inside_region():
    problem = one_problem(vm={"zone": "us-central1-a"})
    assert problem.path == "convex-gcp:vm.zone"
    assert "asia-northeast1-a" in problem.allowed
    assert problem.fix == "pulumi config set --path 'convex-gcp:vm.zone' asia-northeast1-a"


def test_zone_defaults_into_region():
    assert load_settings(config(vm={"zone": None}), "dev").zone == "asia-northeast1-a"


@pytest.mark.parametrize("mode", ["ssl", "plaintext"])
def test_other_modes_load_in_dev(mode):
    assert load_settings(config(connectionMode=mode, iamAuth="false"), "dev").connection_mode == mode


def test_plaintext_rejected_in_prod_with_its_own_reason():
    found = {p.path: p for p in problems("prod", connectionMode="plaintext")}
    problem = found["convex-gcp:connectionMode"]
    assert "unencrypted" in problem.reason and "dev stacks only" in problem.reason
    assert problem.fix == "pulumi config set 'convex-gcp:connectionMode' proxy"


@pytest.mark.parametrize("mode", ["ssl", "plaintext"])
def test_iam_auth_needs_the_proxy(mode):
    problem = one_problem(connectionMode=mode, iamAuth="true")
    assert problem.path == "convex-gcp:iamAuth" and "Auth Proxy" in problem.reason
    assert problem.fix == "pulumi config set 'convex-gcp:iamAuth' false"


def test_unknown_mode():
    problem = one_problem(connectionMode="tunnel")
    assert problem.allowed == "one of proxy, ssl, plaintext"
    assert problem.fix.startswith("no close match; run one of:")


def test_prod_requires_iam_auth_and_proxy():
    problem = one_problem("prod", iamAuth="false")
    assert problem.path == "convex-gcp:iamAuth" and "required when environment is prod" in problem.reason


@pytest.mark.parametrize(
    "changes, path",
    [
        ({"database": {"deletionProtection": False}}, "convex-gcp:database.deletionProtection"),
        ({"database": {"connectorEnforcement": False}}, "convex-gcp:database.connectorEnforcement"),
        ({"database": {"tier": "db-g1-small"}}, "convex-gcp:database.tier"),
        ({"network": {"dashboardSourceRanges": ["0.0.0.0/0"]}}, "convex-gcp:network.dashboardSourceRanges"),
    ],
)
def test_prod_guardrails(changes, path):
    found = problems("prod", **changes)
    assert path in {p.path for p in found}
    assert all("required when environment is prod" in p.reason for p in found if p.path == path)


def test_prod_backups_and_pitr():
    found = {p.path for p in problems("prod", database={"backups": {"enabled": True, "pointInTimeRecovery": False}})}
    assert "convex-gcp:database.backups.pointInTimeRecovery" in found


def test_regional_needs_backups():
    problem = one_problem(database={"availability": "REGIONAL", "backups": {"enabled": True, "pointInTimeRecovery": False}})
    assert "REGIONAL availability needs backups" in problem.reason


def test_missing_project():
    problem = one_problem(**{"gcp:project": None})
    assert problem.path == "gcp:project" and problem.fix == 'pulumi config set gcp:project "$(gcloud config get-value project)"'


def test_missing_environment():
    problem = one_problem(environment=None)
    assert problem.path == "convex-gcp:environment" and problem.fix == "pulumi config set 'convex-gcp:environment' dev"


@pytest.mark.parametrize(
    "changes, path",
    [
        ({"network": {"apiSourceRanges": ["10.0.0.0/33"]}}, "convex-gcp:network.apiSourceRanges"),
        ({"network": {"privateServicesPrefixLength": 28}}, "convex-gcp:network.privateServicesPrefixLength"),
        ({"convex": {"version": "latest"}}, "convex-gcp:convex.version"),
        ({"convex": {"proxyVersion": "2.17.1"}}, "convex-gcp:convex.proxyVersion"),
        ({"convex": {"instanceName": "Convex_Prod"}}, "convex-gcp:convex.instanceName"),
        ({"database": {"backups": {"startTime": "25:00"}}}, "convex-gcp:database.backups.startTime"),
    ],
)
def test_field_formats(changes, path):
    problem = one_problem(**changes)
    assert problem.path.startswith(path), problem.render()
    assert problem.fix.startswith("pulumi config set --path")


def test_set_line_quotes_values():
    assert set_line("convex-gcp:database.flags.work_mem", "4 MB") == "pulumi config set --path 'convex-gcp:database.flags.work_mem' '4 MB'"
    assert set_line("gcp:region", "asia-northeast1") == "pulumi config set 'gcp:region' asia-northeast1"


def test_stack_name_must_fit_resource_names():
    with pytest.raises(ConfigError, match="pulumi stack rename"):
        load_settings(config(), "Very_Long_Stack_Name_For_Testing")


def test_retained_backups_exceed_log_retention_with_pitr():
    problem = one_problem(database={"backups": {"pointInTimeRecovery": True, "retainedBackups": 5, "transactionLogRetentionDays": 7}})
    assert problem.path == "convex-gcp:database.backups.retainedBackups"
    assert problem.fix == "pulumi config set --path 'convex-gcp:database.backups.retainedBackups' 7"
    assert load_settings(config(database={"backups": {"pointInTimeRecovery": True, "retainedBackups": 7, "transactionLogRetentionDays": 7}}), "dev")
    # Without PITR the log retention is not sent, so 3 backups are fine (the dev stack).
    assert load_settings(config(database={"backups": {"pointInTimeRecovery": False, "retainedBackups": 3}}), "dev")
