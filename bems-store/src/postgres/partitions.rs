//! Monthly partitions of the row tables, made ahead of time.
//!
//! `status_changes` and `status_change_versions` are partitioned by month
//! of `occurred_at` (UTC): `status_changes_2026_12` holds December 2026.
//! [`ensure`] creates the partitions from a month on, for the months ahead
//! asked (`bems store partitions`, and the cell template's daily schedule
//! on AWS, both through the schema's `ensure_partitions`): a writer
//! never creates one. A row whose month has no partition lands in the
//! default partition, so no legitimate row is ever refused for its date;
//! [`in_default`] counts such rows (the alarm), and [`ensure`] moves them
//! into the month's partition when it creates it (PostgreSQL refuses to
//! create a partition whose rows sit in the default one).

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};

use super::sql::{Param, Transaction, Transactional};
use super::{Schema, StoreError};

/// The partitioned tables.
pub const TABLES: [&str; 2] = ["status_changes", "status_change_versions"];

/// The first day of the month of `at`.
pub fn month_of(at: DateTime<Utc>) -> NaiveDate {
    NaiveDate::from_ymd_opt(at.year(), at.month(), 1).unwrap_or(NaiveDate::MIN)
}

/// The month after `month`.
pub(crate) fn next_month(month: NaiveDate) -> NaiveDate {
    month.checked_add_months(chrono::Months::new(1)).unwrap_or(NaiveDate::MAX)
}

/// The first instant of `month` (UTC).
pub(crate) fn start(month: NaiveDate) -> DateTime<Utc> {
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
/// partition: the schema's `ensure_partitions` function (migration 0003,
/// which the cell template's daily schedule calls too), in one transaction
/// on `session` (a connection, or the Data API), under the schema's
/// advisory lock.
pub async fn ensure(
    session: &mut impl Transactional,
    schema: &Schema,
    from: DateTime<Utc>,
    months: u32,
) -> Result<Ensured, StoreError> {
    let step = "partitions";
    let tx = session.begin(step).await?;
    let rows = tx
        .rows(step, &ensure_sql(schema, "$1", "$2::int8::int"), &[Param::Time(from), Param::Int(i64::from(months))])
        .await?;
    tx.commit().await?;
    let mut done = Ensured::default();
    for row in rows {
        let read = |e| StoreError::answer(step, e);
        let (name, created, moved) =
            (row.text(0).map_err(read)?, row.boolean(1).map_err(read)?, row.int(2).map_err(read)?);
        if created {
            done.created.push(name);
            done.moved += u64::try_from(moved).unwrap_or(0);
        } else {
            done.existing.push(name);
        }
    }
    Ok(done)
}

/// The statement that makes `schema`'s partitions from the time `from` for
/// `months` months ahead (SQL expressions): what [`ensure`] runs, and what
/// the cell template's schedule sends through the Data API.
pub fn ensure_sql(schema: &Schema, from: &str, months: &str) -> String {
    bems_core::contract::ensure_partitions_sql(schema.as_str(), from, months)
}

/// The statement that fails, naming the count and range, when rows wait in
/// `schema`'s default partition (the template's daily check).
pub fn check_default_sql(schema: &Schema) -> String {
    bems_core::contract::check_default_partition_sql(schema.as_str())
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
