"""The doctor's Postgres checks against real local PostgreSQL clusters (conftest.py)."""

from __future__ import annotations

from pathlib import Path

import psycopg

from tests.doctor.conftest import DATABASE, MAX_CONNECTIONS, PASSWORDS, self_signed
from tools.doctor.pg import PROBE_TABLE, PgTarget, needed_max_connections, postgres_checks


def by_name(checks):
    return {c.name: c for c in checks}


def target(cluster, user="convex", dbname=DATABASE, password=None, sslmode="disable", ca=None) -> PgTarget:
    return PgTarget("127.0.0.1", cluster.port, user, dbname, PASSWORDS.get(user) if password is None else password, sslmode, ca, connect_timeout=5)


def test_member_of_cloudsqlsuperuser_passes_everything(clusters):
    checks = by_name(postgres_checks(target(clusters["plain"]), pool_size=10, expect_tls=False))
    assert [c.status for c in checks.values()] == ["pass"] * 5, checks
    assert "PostgreSQL" in checks["postgres_login"].detail
    assert f"max_connections {MAX_CONNECTIONS}" in checks["pool_fits"].detail
    assert "plaintext" in checks["postgres_tls"].detail


def test_create_probe_is_rolled_back(clusters):
    postgres_checks(target(clusters["plain"]), pool_size=10, expect_tls=False)
    with psycopg.connect(host="127.0.0.1", port=clusters["plain"].port, user="admin", dbname=DATABASE, sslmode="disable") as conn:
        assert conn.execute("SELECT to_regclass(%s)", (PROBE_TABLE,)).fetchone()[0] is None


def test_user_without_create_on_public_fails_with_the_grant(clusters):
    checks = by_name(postgres_checks(target(clusters["plain"], user="outsider"), pool_size=10, expect_tls=False))
    assert checks["postgres_login"].status == "pass"
    assert checks["create_table"].status == "fail"
    assert "schema public" in checks["create_table"].detail
    assert 'GRANT USAGE, CREATE ON SCHEMA public TO "outsider"' in checks["create_table"].fix
    assert "cloudsqlsuperuser" not in checks["create_table"].fix


def test_wrong_password_points_at_the_rotation_runbook(clusters):
    checks = by_name(postgres_checks(target(clusters["plain"], password="wrong"), pool_size=10, expect_tls=False))
    assert checks["postgres_login"].status == "fail"
    assert "Rotate the database password" in checks["postgres_login"].fix
    assert checks["create_table"].status == "skip"


def test_missing_database_says_convex_never_creates_it(clusters):
    checks = by_name(postgres_checks(target(clusters["plain"], dbname="convex_missing"), pool_size=10, expect_tls=False))
    assert checks["postgres_login"].status == "pass"
    assert checks["database_exists"].status == "fail"
    assert "gcloud sql databases create convex_missing" in checks["database_exists"].fix
    assert checks["create_table"].status == "skip"


def test_pool_larger_than_max_connections_allows_fails(clusters):
    checks = by_name(postgres_checks(target(clusters["plain"]), pool_size=128, expect_tls=False))
    assert checks["pool_fits"].status == "fail"
    assert "convex.poolSize" in checks["pool_fits"].fix
    # The suggested max_connections really leaves room for the pool.
    assert f"max_connections' {needed_max_connections(128)}" in checks["pool_fits"].fix


def test_needed_max_connections_is_the_smallest_that_fits():
    from convex_gcp import cloudsql

    value = needed_max_connections(20)
    assert cloudsql.max_pool(value) >= 20 > cloudsql.max_pool(value - 1)


def test_tls_required_server_with_tls_client(clusters):
    checks = by_name(postgres_checks(target(clusters["tls"], sslmode="require"), pool_size=10, expect_tls=True))
    assert checks["postgres_tls"].status == "pass"
    assert "TLS" in checks["postgres_tls"].detail
    assert checks["create_table"].status == "pass"


def test_tls_required_server_refuses_plaintext_client(clusters):
    checks = by_name(postgres_checks(target(clusters["tls"], sslmode="disable"), pool_size=10, expect_tls=True))
    assert checks["postgres_tls"].status == "fail"
    assert "TLS mismatch" in checks["postgres_tls"].detail


def test_plaintext_server_refuses_tls_client(clusters):
    checks = by_name(postgres_checks(target(clusters["plain"], sslmode="require"), pool_size=10, expect_tls=True))
    assert checks["postgres_tls"].status == "fail"
    assert "sslmode" in checks["postgres_tls"].fix


def test_expected_tls_but_plaintext_connection_fails(clusters):
    checks = by_name(postgres_checks(target(clusters["plain"], sslmode="prefer"), pool_size=10, expect_tls=True))
    assert checks["postgres_tls"].status == "fail"
    assert "plaintext" in checks["postgres_tls"].detail


def test_server_ca_verifies_with_the_right_ca(clusters):
    checks = by_name(postgres_checks(target(clusters["tls"], sslmode="verify-ca", ca=clusters["tls"].ca_file), pool_size=10, expect_tls=True))
    assert checks["postgres_tls"].status == "pass"


def test_server_ca_mismatch_says_which_ca_to_download(clusters, tmp_path: Path):
    other, _ = self_signed(tmp_path, "some-other-ca")
    checks = by_name(postgres_checks(target(clusters["tls"], sslmode="verify-ca", ca=str(other)), pool_size=10, expect_tls=True))
    assert checks["postgres_tls"].status == "fail"
    assert "serverCaCert.cert" in checks["postgres_tls"].fix


def test_unreachable_server(clusters):
    from tests.doctor.conftest import _free_port

    t = PgTarget("127.0.0.1", _free_port(), "convex", DATABASE, "x", "disable", connect_timeout=2)
    checks = by_name(postgres_checks(t, pool_size=10, expect_tls=False))
    assert checks["postgres_login"].status == "fail"
    assert "cannot reach" in checks["postgres_login"].detail
