//! The store through the RDS Data API: the operators' path to an Aurora
//! cluster in a private network, with no route into it.
//!
//! [`DataApi`] runs the same SQL as a connection (the query layer, the
//! migrations, the partitions, the roles; see [`super::sql`]) over HTTPS
//! with the caller's IAM credentials and the cluster's secret: `$1`-style
//! parameters become named ones with type hints, a script of several
//! statements is sent one statement at a time in the same transaction, and
//! answers are read by each column's type name.
//!
//! What the Data API imposes: a statement's answer is at most 1 MiB and
//! 45 seconds (the panels and the history are far below both; an export
//! or archive fetches 500 rows at a time, but its count and its first
//! fetch, which sorts the month, exceed 45 seconds on a large month: run
//! those from inside the VPC); timestamps are sent to the millisecond; each
//! statement outside a transaction is a session of its own, so answers are
//! in the server's time zone (UTC on Aurora by default, which the panels'
//! minutes assume). The cluster needs `EnableHttpEndpoint` (the cell
//! template sets it) and the caller `rds-data:ExecuteStatement`,
//! `BeginTransaction`, `CommitTransaction`, `RollbackTransaction` on the
//! cluster, `secretsmanager:GetSecretValue` on the secret and
//! `kms:Decrypt` on the key that encrypts it (the cell key).
//!
//! A transaction given up on is rolled back by
//! [`super::sql::Transaction::rollback`] where the code awaits it (the
//! export and the archive); one dropped uncommitted (a failed migration)
//! by a task spawned on the runtime; a process that exits first leaves it
//! to the Data API, which ends a transaction after three minutes without a
//! call, holding its locks until then.
//!
//! Tested here for its wiring only (moto answers `ExecuteStatement` with
//! registered results and runs no SQL; LocalStack's Data API is not in its
//! community edition); the SQL it sends is the SQL every PostgreSQL test
//! runs. Untested on AWS: `infra/README.md` lists the commands that check
//! it.

use aws_sdk_rdsdata::Client;
use aws_sdk_rdsdata::types::{ColumnMetadata, Field, SqlParameter, TypeHint};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use super::sql::{Cell, Executor, Param, Row, Transaction, Transactional, named_placeholders, split_statements};
use super::{ErrorClass, Schema, SqlStore, StoreError};
use crate::query::QueryError;

/// A cluster's database through the Data API, and the cell's schema in it.
#[derive(Debug, Clone)]
pub struct DataApi {
    client: Client,
    cluster_arn: String,
    secret_arn: String,
    database: String,
    schema: Schema,
}

impl DataApi {
    /// The database `database` of the cluster `cluster_arn`, as the user
    /// of the secret `secret_arn`, the cell's schema `schema`.
    pub fn new(
        client: Client,
        cluster_arn: impl Into<String>,
        secret_arn: impl Into<String>,
        database: impl Into<String>,
        schema: Schema,
    ) -> DataApi {
        DataApi {
            client,
            cluster_arn: cluster_arn.into(),
            secret_arn: secret_arn.into(),
            database: database.into(),
            schema,
        }
    }

    /// `cluster/database` as the user of the secret, for messages.
    pub fn describe(&self) -> String {
        format!("{} (database {}, Data API)", self.cluster_arn, self.database)
    }

    /// Runs one statement, in `transaction` if given.
    async fn statement(
        &self,
        step: &'static str,
        sql: &str,
        params: &[Param],
        transaction: Option<&str>,
    ) -> Result<(Vec<Row>, u64), StoreError> {
        let answer = self
            .client
            .execute_statement()
            .resource_arn(&self.cluster_arn)
            .secret_arn(&self.secret_arn)
            .database(&self.database)
            .sql(named_placeholders(sql))
            .set_parameters(Some(params.iter().enumerate().map(|(i, p)| parameter(i + 1, p)).collect()))
            .include_result_metadata(true)
            .set_transaction_id(transaction.map(str::to_owned))
            .send()
            .await
            .map_err(|e| failure(step, e))?;
        let columns = answer.column_metadata();
        let rows = answer
            .records()
            .iter()
            .map(|record| row(step, columns, record))
            .collect::<Result<Vec<Row>, QueryError>>()
            .map_err(|e| StoreError::answer(step, e))?;
        Ok((rows, u64::try_from(answer.number_of_records_updated()).unwrap_or(0)))
    }
}

/// A failed call: unavailable when the SDK's one classification
/// ([`bems_core::retry::is_transient`]) says trying again may help, or the
/// statement timed out; refused otherwise (a bad statement, a missing
/// privilege or secret).
fn failure<E>(
    step: &'static str,
    e: aws_smithy_runtime_api::client::result::SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> StoreError
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let timed_out = e.as_service_error().and_then(|s| s.code()) == Some("StatementTimeoutException");
    let class =
        if bems_core::retry::is_transient(&e) || timed_out { ErrorClass::Unavailable } else { ErrorClass::Refused };
    let message = match e.as_service_error() {
        Some(s) => bems_core::retry::describe(s),
        None => aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
    };
    StoreError::other(step, class, message, Box::new(e))
}

/// Parameter `n` (`:p<n>` in the statement), with the type hint the Data
/// API needs to send a timestamp as one.
fn parameter(n: usize, p: &Param) -> SqlParameter {
    let (value, hint) = match p {
        Param::Text(v) => (Field::StringValue(v.clone()), None),
        Param::Int(v) => (Field::LongValue(*v), None),
        Param::Float(v) => (Field::DoubleValue(*v), None),
        // The Data API's format: `YYYY-MM-DD HH:MM:SS[.FFF]`, in UTC.
        Param::Time(v) => {
            (Field::StringValue(v.format("%Y-%m-%d %H:%M:%S%.3f").to_string()), Some(TypeHint::Timestamp))
        }
    };
    SqlParameter::builder().name(format!("p{n}")).value(value).set_type_hint(hint).build()
}

/// A record as a [`Row`], each value read by its column's type name.
fn row(step: &'static str, columns: &[ColumnMetadata], record: &[Field]) -> Result<Row, QueryError> {
    let bad = |i: usize, value: String| QueryError::BadValue {
        engine: super::ENGINE,
        query: step,
        column: "(Data API)",
        value: format!("column {i}: {value}"),
    };
    let mut cells = Vec::with_capacity(record.len());
    for (i, field) in record.iter().enumerate() {
        let type_name = columns.get(i).and_then(ColumnMetadata::type_name).unwrap_or("");
        let cell = match field {
            Field::IsNull(true) => Cell::Null,
            Field::BooleanValue(v) => Cell::Bool(*v),
            Field::LongValue(v) => Cell::Int(*v),
            Field::DoubleValue(v) => Cell::Float(*v),
            Field::StringValue(v) => match type_name {
                "numeric" => Cell::Decimal(v.parse().map_err(|_| bad(i, format!("{v:?} as numeric")))?),
                "timestamptz" | "timestamp" => {
                    Cell::Time(timestamp(v).ok_or_else(|| bad(i, format!("{v:?} as a timestamp")))?)
                }
                "date" => Cell::Date(
                    NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| bad(i, format!("{v:?} as a date")))?,
                ),
                // int8 beyond what JSON numbers hold exactly comes as text.
                "int8" | "int4" | "int2" | "bigint" | "serial" => {
                    Cell::Int(v.parse().map_err(|_| bad(i, format!("{v:?} as an integer")))?)
                }
                _ => Cell::Text(v.clone()),
            },
            other => return Err(bad(i, format!("{other:?} ({type_name})"))),
        };
        cells.push(cell);
    }
    Ok(Row::new(step, cells))
}

/// A timestamp as the Data API returns one: `YYYY-MM-DD HH:MM:SS[.f]`, in
/// UTC, with or without an offset.
fn timestamp(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").ok().map(|t| t.and_utc()))
}

impl Executor for DataApi {
    async fn rows(&self, query: &'static str, sql: &str, params: &[Param]) -> Result<Vec<Row>, QueryError> {
        Ok(self.statement(query, sql, params, None).await?.0)
    }
}

impl SqlStore for DataApi {
    fn schema(&self) -> &Schema {
        &self.schema
    }
}

/// A Data API transaction: rolled back when dropped uncommitted (and by
/// the Data API itself after three minutes without a call).
#[derive(Debug)]
pub struct DataApiTransaction<'a> {
    api: &'a DataApi,
    id: String,
    done: bool,
}

impl Transactional for DataApi {
    type Tx<'a> = DataApiTransaction<'a>;

    async fn begin(&mut self, step: &'static str) -> Result<DataApiTransaction<'_>, StoreError> {
        let begun = self
            .client
            .begin_transaction()
            .resource_arn(&self.cluster_arn)
            .secret_arn(&self.secret_arn)
            .database(&self.database)
            .send()
            .await
            .map_err(|e| failure(step, e))?;
        let id = begun.transaction_id().unwrap_or_default().to_owned();
        Ok(DataApiTransaction { api: self, id, done: false })
    }
}

impl Transaction for DataApiTransaction<'_> {
    async fn rows(&self, step: &'static str, sql: &str, params: &[Param]) -> Result<Vec<Row>, StoreError> {
        Ok(self.api.statement(step, sql, params, Some(&self.id)).await?.0)
    }

    async fn execute(&self, step: &'static str, sql: &str, params: &[Param]) -> Result<u64, StoreError> {
        Ok(self.api.statement(step, sql, params, Some(&self.id)).await?.1)
    }

    async fn script(&self, step: &'static str, sql: &str) -> Result<(), StoreError> {
        for statement in split_statements(sql) {
            self.api.statement(step, &statement, &[], Some(&self.id)).await?;
        }
        Ok(())
    }

    async fn commit(mut self) -> Result<(), StoreError> {
        self.api
            .client
            .commit_transaction()
            .resource_arn(&self.api.cluster_arn)
            .secret_arn(&self.api.secret_arn)
            .transaction_id(&self.id)
            .send()
            .await
            .map_err(|e| failure("commit", e))?;
        // Only a committed transaction is spared the rollback.
        self.done = true;
        Ok(())
    }

    async fn rollback(mut self) -> Result<(), StoreError> {
        self.done = true;
        self.api
            .client
            .rollback_transaction()
            .resource_arn(&self.api.cluster_arn)
            .secret_arn(&self.api.secret_arn)
            .transaction_id(&self.id)
            .send()
            .await
            .map_err(|e| failure("rollback", e))?;
        Ok(())
    }

    /// The Data API answers at most 1 MiB per call (Aurora User Guide,
    /// "Data API limitations"): 500 exported rows of about 1 KiB of JSON
    /// each stay well inside it.
    fn fetch_rows(&self) -> u32 {
        500
    }
}

impl Drop for DataApiTransaction<'_> {
    fn drop(&mut self) {
        if self.done || self.id.is_empty() {
            return;
        }
        let rollback = self
            .api
            .client
            .rollback_transaction()
            .resource_arn(&self.api.cluster_arn)
            .secret_arn(&self.api.secret_arn)
            .transaction_id(&self.id);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = rollback.send().await {
                    tracing::warn!(error = %aws_smithy_types::error::display::DisplayErrorContext(&e), "rolling back a Data API transaction");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_named_and_timestamps_hinted_to_the_millisecond() {
        let at = DateTime::parse_from_rfc3339("2026-12-07T12:00:01.123456Z").expect("time").with_timezone(&Utc);
        let p = parameter(2, &Param::Time(at));
        assert_eq!(p.name(), Some("p2"));
        assert_eq!(p.value(), Some(&Field::StringValue("2026-12-07 12:00:01.123".into())));
        assert_eq!(p.type_hint(), Some(&TypeHint::Timestamp));
        assert_eq!(parameter(1, &Param::Int(7)).value(), Some(&Field::LongValue(7)));
        assert_eq!(parameter(1, &Param::Text("x".into())).type_hint(), None);
    }

    #[test]
    fn answers_are_read_by_column_type() {
        let columns: Vec<ColumnMetadata> = ["timestamptz", "numeric", "date", "text", "int8", "uuid", "int8"]
            .iter()
            .map(|t| ColumnMetadata::builder().type_name(*t).build())
            .collect();
        let record = vec![
            Field::StringValue("2026-12-07 12:00:00.5".into()),
            Field::StringValue("1234.50".into()),
            Field::StringValue("2027-01-06".into()),
            Field::StringValue("EUR".into()),
            Field::LongValue(42),
            Field::StringValue("0b1e5f0e-3c3a-4f53-9a6e-0c7a0f1f2a3b".into()),
            Field::IsNull(true),
        ];
        let r = row("history", &columns, &record).expect("row");
        assert_eq!(r.time(0).expect("time").to_rfc3339(), "2026-12-07T12:00:00.500+00:00");
        assert_eq!(r.decimal(1).expect("numeric").to_string(), "1234.50");
        assert_eq!(r.date(2).expect("date").to_string(), "2027-01-06");
        assert_eq!((r.text(3).expect("text"), r.int(4).expect("int")), ("EUR".into(), 42));
        assert_eq!(r.text(5).expect("uuid"), "0b1e5f0e-3c3a-4f53-9a6e-0c7a0f1f2a3b");
        assert_eq!(r.opt_int(6).expect("null"), None);
        let bad = row("history", &columns[..1], &[Field::StringValue("yesterday".into())]).expect_err("bad time");
        assert!(bad.to_string().contains("yesterday"), "{bad}");
        assert_eq!(timestamp("2026-12-07 12:00:00+00").map(|t| t.timestamp()), Some(1_796_644_800));
    }
}
