//! Monthly partitions of the row tables, made ahead of time.
//!
//! `status_changes` and `status_change_versions` are partitioned by month
//! of `occurred_at` (UTC): `status_changes_2026_12` holds December 2026.
//! [`ensure`] creates the partitions from a month on, for the months ahead
//! asked (`bems store partitions`, from a daily schedule on AWS): a writer
//! never creates one. A row whose month has no partition lands in the
//! default partition, so no legitimate row is ever refused for its date;
//! [`in_default`] counts such rows (the alarm), and [`ensure`] moves them
//! into the month's partition when it creates it (PostgreSQL refuses to
//! create a partition whose rows sit in the default one).

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};

use super::migrate::lock_key;
use super::sql::{Param, Transaction, Transactional, single_int, table_exists};
use super::{Schema, StoreError};

/// The partitioned tables.
pub const TABLES: [&str; 2] = ["status_changes", "status_change_versions"];

/// The first day of the month of `at`.
pub fn month_of(at: DateTime<Utc>) -> NaiveDate {
    NaiveDate::from_ymd_opt(at.year(), at.month(), 1).unwrap_or(NaiveDate::MIN)
}

fn next_month(month: NaiveDate) -> NaiveDate {
    month.checked_add_months(chrono::Months::new(1)).unwrap_or(NaiveDate::MAX)
}

fn start(month: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&month.and_hms_opt(0, 0, 0).unwrap_or_default())
}

/// The name of `table`'s partition for `month`.
pub fn partition_name(table: &str, month: NaiveDate) -> String {
    format!("{table}_{:04}_{:02}", month.year(), month.month())
}

/// What [`ensure`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ensured {
    /// Partitions created.
    pub created: Vec<String>,
    /// Partitions already there.
    pub existing: Vec<String>,
    /// Rows moved from the default partition into a new one.
    pub moved: u64,
}

/// Creates `schema`'s partitions for `months` months from the month of
/// `from` (and that month), moving any of their rows out of the default
/// partition. One transaction on `session` (a connection, or the Data API),
/// under the schema's advisory lock.
pub async fn ensure(
    session: &mut impl Transactional,
    schema: &Schema,
    from: DateTime<Utc>,
    months: u32,
) -> Result<Ensured, StoreError> {
    let step = "partitions";
    let tx = session.begin(step).await?;
    tx.execute(step, "SELECT pg_advisory_xact_lock($1)", &[Param::Int(lock_key(schema))]).await?;
    let mut done = Ensured::default();
    let mut month = month_of(from);
    for _ in 0..=months {
        let (lo, hi) = (start(month), start(next_month(month)));
        let range = [Param::Time(lo), Param::Time(hi)];
        for table in TABLES {
            let name = partition_name(table, month);
            if table_exists(&tx, step, schema, &name).await? {
                done.existing.push(name);
                continue;
            }
            let (parent, default) = (schema.table(table), schema.table(&format!("{table}_default")));
            let stranded = single_int(
                &tx,
                step,
                &format!("SELECT count(*) FROM {default} WHERE occurred_at >= $1 AND occurred_at < $2"),
                &range,
            )
            .await?;
            let bounds = format!("FOR VALUES FROM ('{}') TO ('{}')", lo.to_rfc3339(), hi.to_rfc3339());
            let create = format!("CREATE TABLE {} PARTITION OF {parent} {bounds}", schema.table(&name));
            if stranded == 0 {
                tx.script(step, &create).await?;
            } else {
                // The default partition is detached while the month's rows
                // move, then attached again (which checks it holds none).
                tx.script(step, &format!("ALTER TABLE {parent} DETACH PARTITION {default}; {create};")).await?;
                let moved = tx
                    .execute(
                        step,
                        &format!(
                            "WITH gone AS (DELETE FROM {default} WHERE occurred_at >= $1 AND occurred_at < $2 RETURNING *) \
                             INSERT INTO {parent} SELECT * FROM gone"
                        ),
                        &range,
                    )
                    .await?;
                tx.script(step, &format!("ALTER TABLE {parent} ATTACH PARTITION {default} DEFAULT")).await?;
                done.moved += moved;
            }
            done.created.push(name);
        }
        month = next_month(month);
    }
    tx.commit().await?;
    Ok(done)
}

/// Rows in the default partition of `status_changes`: how many, and the
/// range of their `occurred_at`. Anything but zero means a month without
/// its partition: run `bems store partitions`. The query behind it is
/// [`in_default_sql`], for an alarm fed by any SQL runner.
pub async fn in_default(
    client: &tokio_postgres::Client,
    schema: &Schema,
) -> Result<(i64, Option<DateTime<Utc>>, Option<DateTime<Utc>>), StoreError> {
    let row =
        client.query_one(&in_default_sql(schema), &[]).await.map_err(|e| StoreError::new("default partition", e))?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

/// The alarm's query: count, oldest and newest `occurred_at` of the rows
/// in the default partition.
pub fn in_default_sql(schema: &Schema) -> String {
    format!("SELECT count(*), min(occurred_at), max(occurred_at) FROM {}", schema.table("status_changes_default"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_named_by_month_and_months_roll_over_the_year() {
        let dec: DateTime<Utc> = "2026-12-31T23:59:59Z".parse().expect("time");
        let month = month_of(dec);
        assert_eq!(partition_name("status_changes", month), "status_changes_2026_12");
        assert_eq!(partition_name("status_changes", next_month(month)), "status_changes_2027_01");
        assert_eq!(start(next_month(month)).to_rfc3339(), "2027-01-01T00:00:00+00:00");
    }
}
