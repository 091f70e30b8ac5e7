"""The database role Convex logs in as: exactly what Convex's Postgres persistence needs, nothing on
the instance beyond its own database (no `cloudsqlsuperuser`).

What Convex does as that role, read in get-convex/convex-backend at the pinned commit (652b828):
- `crates/clusters/src/lib.rs`: the database is `INSTANCE_NAME` with `-` as `_`; the backend never
  creates it (the program does, `components/database.py`).
- `crates/postgres/src/lib.rs` `PostgresPersistence::with_pool`: no schema is configured by the
  self-hosted image (`crates/db_connection/src/lib.rs` passes the URL's `search_path`, which ours has
  none of), so it reads `SELECT current_schema()` (`public`) and runs `sql::init_sql` there on every
  start; `CREATE SCHEMA` runs only when a schema is named, i.e. never here.
- `crates/postgres/src/sql.rs` `init_sql`: `DO` blocks that `CREATE TABLE IF NOT EXISTS` (documents,
  indexes, leases, read_only, persistence_globals), `ALTER TABLE ... ADD PRIMARY KEY` and
  `CREATE INDEX IF NOT EXISTS` when `to_regclass` finds them missing, and `INSERT INTO leases ...
  ON CONFLICT DO NOTHING`; afterwards only SELECT/INSERT/UPDATE/DELETE on those tables, which the
  role owns because it created them. No extension, no function, no role, no database.

So the role needs CONNECT on its database and USAGE + CREATE on schema `public` there (PostgreSQL 15+
grants PUBLIC no CREATE on `public`; the schema belongs to `pg_database_owner`, i.e. the database's
owner, `cloudsqlsuperuser` for a database made by the Cloud SQL Admin API). The statements below are
what the VM sends through the Cloud SQL Data API as the grant identity (`vm/db-grants.sh`); they are
proved on a real PostgreSQL in tests/test_db_grants.py.
"""

from __future__ import annotations

import json

# Granted as the owner's member: the grantor of record is the owner (PostgreSQL GRANT, "If a superuser
# chooses to issue a GRANT ... the grant is done as if it were issued by the owner"; likewise a member).
PRIVILEGES = ("CONNECT ON DATABASE", "USAGE, CREATE ON SCHEMA public")


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, quoted (IAM role names hold '@' and '.')."""
    if not name or "\x00" in name:
        raise ValueError(f"not a PostgreSQL identifier: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    if "\x00" in text:
        raise ValueError("NUL in a literal")
    return "'" + text.replace("'", "''") + "'"


def grant_statements(role: str, database: str) -> list[str]:
    """What the role gets, run in `database` by a member of its owner. Idempotent (GRANT of a held
    privilege is a no-op), so the VM runs it on every boot and reconcile."""
    r, d = quote_ident(role), quote_ident(database)
    return [
        f"GRANT CONNECT ON DATABASE {d} TO {r}",
        f"GRANT USAGE, CREATE ON SCHEMA public TO {r}",
    ]


def check_statement(role: str) -> str:
    """A statement that fails (and so fails the VM's grant step) while the role still holds more than
    its grants: membership in cloudsqlsuperuser (earlier versions asked Cloud SQL for it), or any of
    superuser, CREATEROLE, CREATEDB. The program drops the membership through the Admin API
    (`database_roles=[]`, components/database.py); this is the VM's proof that it is gone."""
    lit = quote_literal(role)
    return (
        "DO $$ BEGIN "
        f"IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {lit} AND (rolsuper OR rolcreaterole OR rolcreatedb)) "
        f"OR (EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cloudsqlsuperuser') AND pg_has_role({lit}, 'cloudsqlsuperuser', 'MEMBER')) "
        f"THEN RAISE EXCEPTION 'role % still holds more than the Convex grants (cloudsqlsuperuser, superuser, CREATEROLE or CREATEDB)', {lit}; "
        "END IF; END $$"
    )


def grant_sql(role: str, database: str) -> str:
    """The whole step as one Data API `sqlStatement` (statements separated by semicolons)."""
    return ";\n".join([*grant_statements(role, database), check_statement(role)]) + ";\n"


def grant_account_id(prefix: str) -> str:
    """The account the VM acts as to run the grants: made by bootstrap/bootstrap.sh (which lets the VM
    account, and nothing else, mint its tokens), adopted by components/identity.py."""
    return f"{prefix}-sqlgrant"[:30]


def grant_account_email(prefix: str, project: str) -> str:
    return f"{grant_account_id(prefix)}@{project}.iam.gserviceaccount.com"


def execute_sql_body(role: str, database: str) -> str:
    """The Data API request (sqladmin v1 instances.executeSql, ExecuteSqlPayload): the SQL, the
    database it runs in, and the caller's own IAM database login (autoIamAuthn)."""
    return json.dumps({"sqlStatement": grant_sql(role, database), "database": database, "autoIamAuthn": True},
                      indent=1, sort_keys=True) + "\n"
