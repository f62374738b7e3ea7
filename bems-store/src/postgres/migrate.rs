//! The store's schema, from the committed migrations in
//! `bems-store/migrations/`.
//!
//! [`migrate`] applies the ones a cell's schema lacks, in order, all in one
//! transaction (PostgreSQL's DDL is transactional: a failed migration
//! leaves nothing behind), holding an advisory lock on the schema so that
//! two operators or a deployment and a cron job cannot interleave. Each
//! applied migration is recorded with the SHA-256 of its text; a recorded
//! migration whose file has changed since is an error, not something to
//! apply again. A writer never migrates: it runs with the privileges to
//! write rows, not to change tables (`bems store migrate` does).
//!
//! The migrations name no schema: each runs with `search_path` set to the
//! cell's, so one set of files serves every cell. They run on a connection
//! or through the RDS Data API (statement by statement, in the same
//! transaction), the same SQL.

use sha2::{Digest, Sha256};

use super::sql::{Param, Transaction, Transactional};
use super::{Schema, StoreError};

/// One committed migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its number; applied in ascending order.
    pub version: i32,
    /// Its name.
    pub name: &'static str,
    /// Its SQL.
    pub sql: &'static str,
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "store", sql: include_str!("../../migrations/0001_store.sql") },
    Migration { version: 2, name: "archives", sql: include_str!("../../migrations/0002_archives.sql") },
    Migration { version: 3, name: "upkeep", sql: include_str!("../../migrations/0003_upkeep.sql") },
];

impl Migration {
    /// The SHA-256 of its SQL, hex.
    pub fn checksum(&self) -> String {
        hex(&Sha256::digest(self.sql.as_bytes()))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Migrated {
    /// Versions applied now.
    pub applied: Vec<i32>,
    /// Versions found already applied.
    pub already: Vec<i32>,
}

/// Why migrating failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// A statement failed (the transaction is rolled back: nothing changed).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A recorded migration's file has changed since it was applied.
    #[error(
        "migration {version} ({name}) was applied with checksum {recorded} but its file now has {current}: migrations are never edited once applied; add a new one"
    )]
    Changed {
        /// Its version.
        version: i32,
        /// Its name.
        name: &'static str,
        /// The checksum recorded.
        recorded: String,
        /// The file's.
        current: String,
    },
    /// The schema records a migration this build does not know: it was
    /// migrated by a newer BEMS.
    #[error("the schema has migration {0}, which this build does not know: it was migrated by a newer BEMS")]
    Unknown(i32),
}

/// The advisory lock key of `schema`'s migrations, partition changes and
/// archives (the schema's `upkeep_lock_key()`, migration 0003, computes the
/// same for the partitions it makes).
pub fn lock_key(schema: &Schema) -> i64 {
    let digest = Sha256::digest(format!("bems-store:{schema}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// Applies the migrations `schema` lacks (creating the schema if needed),
/// in one transaction on `session` (a connection, or the Data API).
pub async fn migrate(session: &mut impl Transactional, schema: &Schema) -> Result<Migrated, MigrateError> {
    let step = "migrate";
    let tx = session.begin(step).await?;
    tx.execute(step, "SELECT pg_advisory_xact_lock($1)", &[Param::Int(lock_key(schema))]).await?;
    tx.script(
        step,
        &format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                 version    integer     PRIMARY KEY,
                 name       text        NOT NULL,
                 checksum   text        NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );
             SET LOCAL search_path TO {schema}, pg_catalog;"
        ),
    )
    .await?;
    let recorded = tx
        .rows(step, &format!("SELECT version, checksum FROM {schema}.schema_migrations ORDER BY version"), &[])
        .await?;
    let mut done = Migrated { applied: Vec::new(), already: Vec::new() };
    for row in &recorded {
        let read = |e| StoreError::answer(step, e);
        let (version, checksum) = (row.int(0).map_err(read)?, row.text(1).map_err(read)?);
        let version = i32::try_from(version).map_err(|_| MigrateError::Unknown(i32::MAX))?;
        let Some(m) = MIGRATIONS.iter().find(|m| m.version == version) else {
            return Err(MigrateError::Unknown(version));
        };
        if m.checksum() != checksum {
            return Err(MigrateError::Changed { version, name: m.name, recorded: checksum, current: m.checksum() });
        }
        done.already.push(version);
    }
    for m in MIGRATIONS.iter().filter(|m| !done.already.contains(&m.version)) {
        tx.script("migrate: apply", m.sql).await?;
        tx.execute(
            step,
            &format!("INSERT INTO {schema}.schema_migrations (version, name, checksum) VALUES ($1::int8, $2, $3)"),
            &[Param::Int(i64::from(m.version)), Param::Text(m.name.to_owned()), Param::Text(m.checksum())],
        )
        .await?;
        done.applied.push(m.version);
    }
    tx.commit().await?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_and_name_no_schema() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        assert_eq!(MIGRATIONS[0].version, 1);
        for m in MIGRATIONS {
            // search_path makes them the cell's; a schema-qualified name
            // would write into one schema for every cell.
            let code: String = m.sql.lines().filter(|l| !l.trim_start().starts_with("--")).collect();
            assert!(!code.contains("bems_"), "migration {} names a schema", m.version);
            assert_eq!(m.checksum().len(), 64);
        }
    }

    #[test]
    fn the_stage_and_status_checks_list_exactly_the_lifecycle() {
        let sql = MIGRATIONS[0].sql;
        let list = |items: Vec<&str>| items.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ");
        let stages = list(bems_core::Stage::ALL.iter().map(|s| s.as_str()).collect());
        let statuses = list(bems_core::Status::ALL.iter().map(|s| s.as_str()).collect());
        assert!(sql.contains(&format!("CHECK (stage IN ({stages}))")), "{stages}");
        assert!(sql.contains(&format!("CHECK (status IN ({statuses}))")), "{statuses}");
        assert!(sql.contains(&format!("CHECK (previous_status IN ({statuses}))")));
    }

    #[test]
    fn each_schema_has_its_own_lock() {
        let a = lock_key(&Schema::new("bems_a").expect("schema"));
        assert_ne!(a, lock_key(&Schema::new("bems_b").expect("schema")));
        assert_eq!(a, lock_key(&Schema::new("bems_a").expect("schema")));
    }
}
