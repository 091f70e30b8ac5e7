"""The Convex role's grants (convex_gcp/db_grants.py) on a real local PostgreSQL set up like Cloud SQL:
`cloudsqlsuperuser` (NOLOGIN CREATEDB CREATEROLE) owns the Convex database, the grant identity is a
member of it (not a superuser, like an IAM user given database_roles=[cloudsqlsuperuser]), the Convex
role starts with nothing (a new CLOUD_IAM_SERVICE_ACCOUNT user), and another database holds a table.

Convex's start-up steps are replayed as that role: the kinds of statement
`crates/postgres/src/sql.rs` `init_sql` and `lib.rs` `with_pool` run at the pinned commit (our own
table bodies, the statements' shapes and the privileges they exercise are Convex's). Then what the
role must not do: read another database's or another role's table, create a role or a database, read
pg_authid, or become cloudsqlsuperuser."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from convex_gcp import db_grants
from tests.doctor.conftest import _as_owner, _bin, initdb

DATABASE = "convex_self_hosted"
# The Convex role as Cloud SQL names an IAM service account's user: the email without .gserviceaccount.com.
ROLE = "convex-dev-vm@example-convex-dev.iam"
GRANTOR = "convex-dev-sqlgrant@example-convex-dev.iam"

# Convex's start-up, statement kinds as in sql.rs init_sql (DO blocks guarded by to_regclass, CREATE
# TABLE IF NOT EXISTS, ALTER TABLE ADD PRIMARY KEY, CREATE INDEX IF NOT EXISTS, INSERT ... ON CONFLICT)
# in current_schema(), then the lease and document traffic of lib.rs (UPDATE, SELECT ... FOR UPDATE, DELETE).
CONVEX_START = [
    "SELECT current_schema()",
    "DO $$ BEGIN IF to_regclass('public.documents') IS NULL THEN "
    "CREATE TABLE IF NOT EXISTS public.documents (id BYTEA NOT NULL, ts BIGINT NOT NULL, table_id BYTEA NOT NULL, "
    "json_value BYTEA NOT NULL, deleted BOOLEAN DEFAULT false, prev_ts BIGINT); END IF; END $$",
    "DO $$ BEGIN IF to_regclass('public.documents_pkey') IS NULL THEN "
    "ALTER TABLE public.documents ADD PRIMARY KEY (ts, table_id, id); END IF; "
    "IF to_regclass('public.documents_by_table_and_id') IS NULL THEN "
    "CREATE INDEX IF NOT EXISTS documents_by_table_and_id ON public.documents (table_id, id, ts); END IF; END $$",
    "DO $$ BEGIN IF to_regclass('public.leases') IS NULL THEN "
    "CREATE TABLE IF NOT EXISTS public.leases (id BIGINT NOT NULL, ts BIGINT NOT NULL, PRIMARY KEY (id)); END IF; END $$",
    "DO $$ BEGIN IF to_regclass('public.persistence_globals') IS NULL THEN "
    "CREATE TABLE IF NOT EXISTS public.persistence_globals (key TEXT NOT NULL, json_value BYTEA NOT NULL, PRIMARY KEY (key)); END IF; END $$",
    "INSERT INTO public.leases (id, ts) VALUES (1, 0) ON CONFLICT DO NOTHING",
    "SELECT ts FROM public.leases WHERE id = 1 FOR UPDATE",
    "UPDATE public.leases SET ts = 1 WHERE id = 1 AND ts = 0",
    "INSERT INTO public.documents (id, ts, table_id, json_value) VALUES ('\\x01', 1, '\\x02', '\\x7b7d') "
    "ON CONFLICT (ts, table_id, id) DO UPDATE SET json_value = excluded.json_value",
    "INSERT INTO public.persistence_globals (key, json_value) VALUES ('k', '\\x00') ON CONFLICT (key) DO UPDATE SET json_value = excluded.json_value",
    "DELETE FROM public.documents WHERE ts < 0",
]


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        initdb(self.data)
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = ''\nunix_socket_directories = '{root}'\nport = 5432\n")
        # Authorization is under test, not authentication: every role logs in over the socket.
        (self.data / "pg_hba.conf").write_text("local all all trust\n")
        subprocess.run(_as_owner([_bin("pg_ctl"), "-D", str(self.data), "-l", str(root / "log"), "-w", "start"]), check=True, capture_output=True)

    def stop(self) -> None:
        subprocess.run(_as_owner([_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def connect(self, user: str, dbname: str = DATABASE) -> psycopg.Connection:
        return psycopg.connect(host=str(self.root), port=5432, user=user, dbname=dbname, autocommit=True)

    def run(self, user: str, sql: str, dbname: str = DATABASE) -> None:
        with self.connect(user, dbname) as conn:
            conn.execute(sql)


def make_root() -> Path:
    _bin("initdb")
    root = Path(tempfile.mkdtemp(prefix="convex-gcp-grants-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    return root


def prepare(c: Cluster, role: str = ROLE, database: str = DATABASE, grantor: str = GRANTOR) -> None:
    """Roles and databases as Cloud SQL has them once the program ran: the grant user in
    cloudsqlsuperuser (database_roles), the Convex role with nothing, the database owned by cloudsqlsuperuser."""
    c.run("admin", "CREATE ROLE cloudsqlsuperuser NOLOGIN CREATEDB CREATEROLE", "postgres")
    c.run("admin", f"CREATE ROLE {db_grants.quote_ident(grantor)} LOGIN IN ROLE cloudsqlsuperuser", "postgres")
    c.run("admin", f"CREATE ROLE {db_grants.quote_ident(role)} LOGIN", "postgres")
    c.run("admin", f"CREATE DATABASE {database} OWNER cloudsqlsuperuser", "postgres")
    c.run("admin", "CREATE DATABASE otherdb OWNER cloudsqlsuperuser", "postgres")
    c.run("admin", "CREATE TABLE payroll (n int); INSERT INTO payroll VALUES (1); ALTER TABLE payroll OWNER TO cloudsqlsuperuser", "otherdb")
    c.run("admin", "CREATE TABLE public.audit (n int); ALTER TABLE public.audit OWNER TO cloudsqlsuperuser", database)


@pytest.fixture
def cluster():
    c = Cluster(make_root())
    try:
        prepare(c)
        yield c
    finally:
        c.stop()


def apply_grants(c: Cluster) -> None:
    """What the VM sends through the Data API, run as the grant identity (SET ROLE is what an IAM user
    with database_roles does implicitly through INHERIT; here the membership inherits too)."""
    c.run(GRANTOR, db_grants.grant_sql(ROLE, DATABASE))


def convex_start(c: Cluster, role: str = ROLE, database: str = DATABASE) -> None:
    with c.connect(role, database) as conn:
        for statement in CONVEX_START:
            conn.execute(statement)


# What the role must be refused, each as (what, database, statements).
FORBIDDEN = [
    ("another database's table", "otherdb", ["SELECT * FROM payroll"]),
    ("another role's table in its database", DATABASE, ["SELECT * FROM public.audit"]),
    ("creating a role", DATABASE, ["CREATE ROLE intruder LOGIN"]),
    ("creating a database", DATABASE, ["CREATE DATABASE intruder"]),
    ("reading pg_authid", DATABASE, ["SELECT rolpassword FROM pg_authid"]),
    ("becoming cloudsqlsuperuser", DATABASE, ["SET ROLE cloudsqlsuperuser"]),
    ("creating a role as cloudsqlsuperuser", DATABASE, ["SET ROLE cloudsqlsuperuser", "CREATE ROLE intruder2 LOGIN"]),
]


def refused(c: Cluster, dbname: str, statements: list[str]) -> bool:
    try:
        with c.connect(ROLE, dbname) as conn:
            for statement in statements:
                conn.execute(statement)
    except (errors.InsufficientPrivilege, errors.InvalidParameterValue) as error:
        return "permission denied" in str(error)
    return False


def test_convex_cannot_start_without_the_grants(cluster):
    """A new IAM user holds nothing: CREATE in public is refused (PostgreSQL 15+)."""
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied for schema public"):
        convex_start(cluster)


def test_with_the_grants_convex_starts_twice_and_keeps_its_data(cluster):
    apply_grants(cluster)
    convex_start(cluster)
    convex_start(cluster)  # every start runs the same steps over existing tables
    with cluster.connect(ROLE) as conn:
        owners = dict(conn.execute("SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'").fetchall())
        assert conn.execute("SELECT count(*) FROM public.documents").fetchone()[0] == 1
    assert owners == {"documents": ROLE, "leases": ROLE, "persistence_globals": ROLE, "audit": "cloudsqlsuperuser"}


def test_the_grants_are_idempotent(cluster):
    apply_grants(cluster)
    apply_grants(cluster)
    convex_start(cluster)


@pytest.mark.parametrize("what,dbname,statements", FORBIDDEN, ids=[f[0] for f in FORBIDDEN])
def test_the_role_can_do_nothing_outside_its_own_tables(cluster, what, dbname, statements):
    apply_grants(cluster)
    convex_start(cluster)
    assert refused(cluster, dbname, statements), what


def test_the_old_grant_fails_these_checks(cluster):
    """What earlier versions did (database_roles=[cloudsqlsuperuser]): Convex starts, and the role reads
    other databases and creates roles and databases, which the checks above catch; the grant step's own
    check refuses to finish while the membership is there."""
    cluster.run("admin", f"GRANT cloudsqlsuperuser TO {db_grants.quote_ident(ROLE)}", "postgres")
    convex_start(cluster)
    caught = [what for what, dbname, statements in FORBIDDEN if not refused(cluster, dbname, statements)]
    assert caught == ["another database's table", "another role's table in its database", "becoming cloudsqlsuperuser",
                      "creating a role as cloudsqlsuperuser"]
    with pytest.raises(errors.RaiseException, match="still holds more than the Convex grants"):
        apply_grants(cluster)


def test_names_are_quoted_not_interpolated():
    assert db_grants.quote_ident('a"b') == '"a""b"'
    assert db_grants.quote_literal("it's") == "'it''s'"
    sql = db_grants.grant_sql('x"; DROP DATABASE y; --', DATABASE)
    assert 'TO "x""; DROP DATABASE y; --"' in sql
    with pytest.raises(ValueError):
        db_grants.quote_ident("")
