//! The store's database roles, each with only what its programs do.
//!
//! - the **migration owner**: whoever runs `bems store migrate` (on RDS
//!   and Aurora the master user, from its Secrets Manager secret); it owns
//!   the schema and its tables, and makes the partitions;
//! - the **writer** ([`bems_core::contract::DB_WRITER`]): the status
//!   writer's login; `INSERT`, `UPDATE` and `SELECT` on the rows, the
//!   invoices and the rollups, `INSERT` and `SELECT` on the versions;
//!   never `DELETE`, `TRUNCATE` or DDL;
//! - the **reader** ([`bems_core::contract::DB_READER`]): the CLI's, the
//!   monitor's and a BI tool's login; `SELECT` only;
//! - the **Data API reader** ([`bems_core::contract::DB_API_READER`]): the
//!   same privileges with a password, because the RDS Data API logs in
//!   with a secret's password, never an IAM token ([`set_password`] sets
//!   it from the cell's secret, as a SCRAM-SHA-256 verifier: the password
//!   itself never reaches the server or its logs).
//!
//! None is a superuser, may create roles or databases, or owns anything.
//! On RDS and Aurora (where the role `rds_iam` exists) the writer and the
//! reader are granted `rds_iam`: they log in with IAM tokens only, and have
//! no password. Elsewhere the operator gives them one (`\password` in
//! psql).
//!
//! Privileges on a partitioned table cover its partitions when reached
//! through it, which is the only way the programs reach them, so the
//! partitions made each month need no grants.

use bems_core::contract::{DB_API_READER, DB_READER, DB_WRITER};

use super::sql::{Param, Transaction, Transactional};
use super::{Schema, StoreError};

/// The advisory lock the grants take (`b"bemsrole"` as a number).
const ROLES_LOCK: i64 = 0x6265_6d73_726f_6c65;

/// The tables the writer inserts into and updates.
const WRITER_UPSERTS: [&str; 5] = ["status_changes", "invoices", "status_minute", "money_minute", "largest_minute"];
/// The tables the writer only appends to.
const WRITER_APPENDS: [&str; 1] = ["status_change_versions"];

/// The statements that make (if missing) the writer and reader roles and
/// grant them exactly their privileges on `schema`'s tables; run again
/// after each migration (each statement is idempotent, and privileges
/// granted before are revoked first, so a privilege taken out of this list
/// is taken away).
pub fn grant_sql(schema: &Schema) -> String {
    let table = |t: &str| schema.table(t);
    let upserts: Vec<String> = WRITER_UPSERTS.iter().map(|t| table(t)).collect();
    let appends: Vec<String> = WRITER_APPENDS.iter().map(|t| table(t)).collect();
    format!(
        "DO $roles$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{DB_WRITER}') THEN
             CREATE ROLE {DB_WRITER} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
           END IF;
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{DB_READER}') THEN
             CREATE ROLE {DB_READER} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
           END IF;
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{DB_API_READER}') THEN
             CREATE ROLE {DB_API_READER} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
           END IF;
           IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'rds_iam') THEN
             GRANT rds_iam TO {DB_WRITER};
             GRANT rds_iam TO {DB_READER};
           END IF;
         END $roles$;
         REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {DB_WRITER}, {DB_READER}, {DB_API_READER};
         REVOKE ALL ON SCHEMA {schema} FROM {DB_WRITER}, {DB_READER}, {DB_API_READER};
         GRANT USAGE ON SCHEMA {schema} TO {DB_WRITER}, {DB_READER}, {DB_API_READER};
         GRANT SELECT, INSERT, UPDATE ON {upserts} TO {DB_WRITER};
         GRANT SELECT, INSERT ON {appends} TO {DB_WRITER};
         GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {DB_READER}, {DB_API_READER};",
        upserts = upserts.join(", "),
        appends = appends.join(", "),
    )
}

/// Makes the roles and grants their privileges on `schema`, in one
/// transaction on `session` (a connection, or the Data API). The caller
/// needs `CREATEROLE` (the RDS master user has it) and to own the schema's
/// tables (it ran the migrations).
pub async fn grant(session: &mut impl Transactional, schema: &Schema) -> Result<(), StoreError> {
    let tx = session.begin("grant").await?;
    // Roles belong to the whole server: one grant at a time, whatever the
    // schema, or two cells' first grants could both create a role.
    tx.execute("grant", "SELECT pg_advisory_xact_lock($1)", &[Param::Int(ROLES_LOCK)]).await?;
    tx.script("grant", &grant_sql(schema)).await?;
    tx.commit().await
}

/// Sets the Data API reader's password (made by [`grant`]) to `password`,
/// sent as a SCRAM-SHA-256 verifier (salted, 4,096 iterations: what
/// PostgreSQL itself stores), on `session`.
pub async fn set_password(session: &mut impl Transactional, password: &str) -> Result<(), StoreError> {
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    let tx = session.begin("reader password").await?;
    tx.execute("reader password", "SELECT pg_advisory_xact_lock($1)", &[Param::Int(ROLES_LOCK)]).await?;
    // A verifier is `SCRAM-SHA-256$<iterations>:<salt>$<keys>` in base64:
    // no quote to escape. (ALTER ROLE takes no parameter.)
    tx.script("reader password", &format!("ALTER ROLE {DB_API_READER} PASSWORD '{verifier}'")).await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_may_not_delete_and_the_reader_only_select() {
        let sql = grant_sql(&Schema::new("bems_x").expect("schema"));
        assert!(!sql.contains("DELETE") && !sql.contains("TRUNCATE"));
        assert!(sql.contains(&format!("GRANT SELECT ON ALL TABLES IN SCHEMA bems_x TO {DB_READER}, {DB_API_READER};")));
        assert!(sql.contains(&format!("GRANT SELECT, INSERT ON bems_x.status_change_versions TO {DB_WRITER};")));
        assert_eq!(sql.matches("NOSUPERUSER NOCREATEDB NOCREATEROLE").count(), 3);
        assert!(!sql.contains(&format!("GRANT rds_iam TO {DB_API_READER}")), "the Data API logs in with a password");
    }
}
