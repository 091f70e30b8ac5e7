"""Postgres-side checks, run as the Convex user against the database Convex opens: login and
`SELECT version()`, the database exists, the user can create tables in its schema (what
Convex does on every start), the pool fits under max_connections, and TLS as expected."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import psycopg
from psycopg import errors

from convex_gcp import cloudsql, db_grants

from .result import Check, failed, passed, skipped, warned

PROBE_TABLE = "convex_gcp_doctor_probe"


@dataclass(frozen=True)
class PgTarget:
    host: str
    port: int
    user: str
    dbname: str
    password: Optional[str] = None  # None: the Auth Proxy logs in with IAM (--auto-iam-authn)
    sslmode: str = "disable"  # the proxy's local listener speaks plaintext
    sslrootcert: Optional[str] = None
    connect_timeout: int = 10
    instance: str = "<instance>"  # for fix lines only

    def params(self, dbname: Optional[str] = None) -> dict[str, object]:
        params: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": dbname or self.dbname,
            "sslmode": self.sslmode,
            "connect_timeout": self.connect_timeout,
            "application_name": "convex-gcp-doctor",
        }
        if self.password is not None:
            params["password"] = self.password
        if self.sslrootcert:
            params["sslrootcert"] = self.sslrootcert
        return params


def _server_text(error: Exception) -> str:
    """The server's own words: libpq prefixes 'connection to server at ... failed:'."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text.rsplit(" failed: ", 1)[-1]


def _missing_database(error: Exception, dbname: str) -> bool:
    return isinstance(error, errors.InvalidCatalogName) or f'database "{dbname}" does not exist' in str(error)


def _connect_problem(target: PgTarget, error: Exception) -> Check:
    """Turn a failed connection into the fix an operator needs."""
    text = _server_text(error)
    lowered = str(error).lower()
    if isinstance(error, errors.InvalidPassword) or "password authentication failed" in lowered:
        return failed(
            "postgres_login",
            f"{target.user}: {text}",
            "The password in Secret Manager no longer matches the database user: docs/runbooks.md, 'Rotate the database password'.\n"
            "With iamAuth, check the VM's service account has roles/cloudsql.instanceUser and the instance has cloudsql.iam_authentication=on.",
        )
    if "certificate verify failed" in lowered or "certificate" in lowered and "ssl" in lowered:
        return failed(
            "postgres_tls",
            f"the server certificate did not verify: {text}",
            f"Use the instance's current server CA: gcloud sql instances describe {target.instance} --format='value(serverCaCert.cert)' > server-ca.pem\n"
            "For host-name verification (Convex's rustls), the instance needs serverCaMode GOOGLE_MANAGED_CAS_CA and a connection by its DNS name.",
        )
    if "does not support ssl" in lowered or "no encryption" in lowered or "ssl" in lowered and "required" in lowered:
        return failed(
            "postgres_tls",
            f"TLS mismatch between client and server: {text}",
            "The server's ssl_mode and the client's sslmode disagree. Proxy mode: Convex speaks plaintext to the proxy "
            "(sslmode=disable) and the proxy encrypts. ssl mode: the instance must allow encrypted connections (ENCRYPTED_ONLY).",
        )
    if isinstance(error, errors.InvalidAuthorizationSpecification) or "no pg_hba.conf entry" in lowered:
        return failed("postgres_login", f"{target.user}: {text}", "The server refuses this user or this kind of connection (pg_hba); check the user exists: gcloud sql users list --instance " + target.instance)
    if "timeout" in lowered or "refused" in lowered or "could not connect" in lowered or "connection" in lowered:
        return failed(
            "postgres_login",
            f"cannot reach {target.host}:{target.port}: {text}",
            "Proxy mode: is the proxy running (check proxy_ready)? Direct modes: is the peering ACTIVE and TCP 5432 reachable (check tcp)?",
        )
    return failed("postgres_login", text, "See the server log: gcloud sql operations list / Logs Explorer for the instance.")


def postgres_checks(target: PgTarget, pool_size: int, expect_tls: Optional[bool]) -> list[Check]:
    """All Postgres checks; later ones are skipped when an earlier one makes them meaningless."""
    checks: list[Check] = []
    try:
        conn = psycopg.connect(**target.params(), autocommit=True)  # type: ignore[arg-type]
    except psycopg.Error as error:
        # Connection-time errors carry no SQLSTATE in psycopg; the server's FATAL text is all there is.
        if not _missing_database(error, target.dbname):
            checks.append(_connect_problem(target, error))
            return checks + [skipped(name, "needs a login") for name in ("database_exists", "create_table", "pool_fits")]
        # PostgreSQL authenticates before it looks the database up, so the login itself worked.
        checks.append(passed("postgres_login", f"{target.user} logged in (the database is missing, see below)"))
        checks.append(
            failed(
                "database_exists",
                _server_text(error),
                f"Convex never creates its database. Create it: gcloud sql databases create {target.dbname} --instance={target.instance}\n"
                "(or `pulumi up`, which declares it; the name is convex.instanceName with '-' replaced by '_').",
            )
        )
        return checks + [skipped(name, "needs the database") for name in ("create_table", "pool_fits", "postgres_tls")]

    with conn:
        version = conn.execute("SELECT version()").fetchone()[0]
        checks.append(passed("postgres_login", f"{target.user} logged in; {version.split(',')[0]}"))
        checks.append(passed("database_exists", f"database {target.dbname} exists"))
        checks.append(_create_table(conn, target))
        checks.append(_pool_fits(conn, pool_size))
        checks.append(_tls(conn, expect_tls))
    return checks


def _create_table(conn: psycopg.Connection, target: PgTarget) -> Check:
    schema = conn.execute("SELECT current_schema()").fetchone()[0]
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(f"CREATE TABLE {PROBE_TABLE} (id bigint PRIMARY KEY)")
    except errors.InsufficientPrivilege as error:
        return failed(
            "create_table",
            f"{target.user} cannot create tables in schema {schema}: {str(error).strip()}",
            "Convex creates its tables on every start; on PostgreSQL 15+ that needs CREATE on schema public.\n"
            f"As a Cloud SQL admin user, in database {target.dbname}: "
            + "; ".join(db_grants.grant_statements(target.user, target.dbname))
            + ";\n(the VM applies exactly these at every boot through the Cloud SQL Data API: docs/security.md, \"Database\").",
        )
    return passed("create_table", f"{target.user} can create tables in schema {schema} (probe rolled back)")


def _pool_fits(conn: psycopg.Connection, pool_size: int) -> Check:
    max_connections = int(conn.execute("SHOW max_connections").fetchone()[0])
    in_use = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'").fetchone()[0]
    limit = cloudsql.max_pool(max_connections)
    detail = f"pool {pool_size}, max_connections {max_connections} (at most {limit} for Convex after headroom), {in_use} client connections now"
    if pool_size > limit:
        return failed(
            "pool_fits",
            detail,
            f"Lower the pool: pulumi config set convex-gcp:convex.poolSize {max(1, limit)}\n"
            f"or raise max_connections: pulumi config set --path 'convex-gcp:database.flags.max_connections' {needed_max_connections(pool_size)}",
        )
    return passed("pool_fits", detail)


def needed_max_connections(pool_size: int) -> int:
    """The smallest max_connections whose headroom still leaves room for this pool."""
    value = pool_size
    while cloudsql.max_pool(value) < pool_size:
        value += 1
    return value


def _tls(conn: psycopg.Connection, expect_tls: Optional[bool]) -> Check:
    row = conn.execute("SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    encrypted = bool(row and row[0])
    shown = f"TLS {row[1]} {row[2]}" if encrypted else "plaintext"
    if expect_tls and not encrypted:
        return failed("postgres_tls", f"the connection is {shown}", "ssl mode must encrypt: set the instance's ssl_mode to ENCRYPTED_ONLY (pulumi up) and use sslmode=require or stricter.")
    if expect_tls is False and encrypted:
        return warned("postgres_tls", f"the connection is {shown}, expected plaintext to the proxy's local listener", "Harmless, but check you reached the proxy, not the instance directly.")
    note = " (to the proxy's local listener; the proxy encrypts to Cloud SQL)" if expect_tls is False else ""
    return passed("postgres_tls", f"the connection is {shown}{note}")
