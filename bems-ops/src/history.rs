//! `bems history INVOICE_ID`: an invoice's whole lifecycle from the cell's
//! Timestream table, oldest first, for an auditor.
//!
//! One query (`history_query`), paged through `NextToken`; rows become
//! [`Entry`] values by column name (`parse_page`), so the answer does not
//! depend on column order. Timestream for LiveAnalytics answers with every
//! value as text; the measures the writer stores are described in
//! `bems_lambda::timestream`.

use aws_sdk_timestreamquery::operation::query::QueryOutput;
use bems_core::contract::{TIMESTREAM_TABLE, columns};
use bems_core::fields::InvoiceId;
use bems_core::routing::CellSpec;
use serde::Serialize;

/// A failed history lookup.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The query failed.
    #[error("history: the Timestream query failed: {0}")]
    Query(#[from] crate::CallError),
    /// The answer lacks a column the history needs.
    #[error("history: the answer has no column {0:?}")]
    MissingColumn(&'static str),
}

/// The query for `invoice`'s history in `spec`'s cell.
pub fn history_query(spec: &CellSpec, invoice: &InvoiceId) -> String {
    // Invoice ids are validated (letters, digits and a few separators); the
    // quote is doubled anyway, as SQL wants.
    let id = invoice.as_str().replace('\'', "''");
    format!(
        "SELECT time, stage, status, previous_status, event_id, amount, currency, due_date, \
         stage_latency_ms, end_to_end_latency_ms FROM \"{}\".\"{TIMESTREAM_TABLE}\" \
         WHERE measure_name = 'status_change' AND invoice_id = '{id}' ORDER BY time ASC",
        spec.timestream_database()
    )
}

/// One status change of an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// When it happened (the event's `occurredAt`), as Timestream prints it.
    pub time: String,
    /// The stage that received it.
    pub stage: String,
    /// The status it set.
    pub status: String,
    /// The status before, if any.
    pub previous_status: Option<String>,
    /// The event's id.
    pub event_id: String,
    /// The amount, exactly as stored.
    pub amount: Option<String>,
    /// Its currency.
    pub currency: Option<String>,
    /// The payment due date.
    pub due_date: Option<String>,
    /// Milliseconds since the previous status change.
    pub stage_latency_ms: Option<i64>,
    /// Milliseconds since the invoice was submitted.
    pub end_to_end_latency_ms: Option<i64>,
}

/// The entries of one page of the answer.
pub fn parse_page(page: &QueryOutput) -> Result<Vec<Entry>, HistoryError> {
    if page.rows().is_empty() {
        // An empty answer may come without column descriptions.
        return Ok(Vec::new());
    }
    let columns: Vec<&str> = page.column_info().iter().map(|c| c.name().unwrap_or_default()).collect();
    let index = |name: &'static str| columns.iter().position(|c| *c == name);
    let need = |name: &'static str| index(name).ok_or(HistoryError::MissingColumn(name));
    let (time, stage, status, event_id) =
        (need("time")?, need(columns::STAGE)?, need(columns::STATUS)?, need(columns::EVENT_ID)?);
    let optional = [
        columns::PREVIOUS_STATUS,
        columns::AMOUNT,
        columns::CURRENCY,
        columns::DUE_DATE,
        columns::STAGE_LATENCY_MS,
        columns::END_TO_END_LATENCY_MS,
    ]
    .map(index);
    let mut entries = Vec::with_capacity(page.rows().len());
    for row in page.rows() {
        let value = |i: Option<usize>| -> Option<String> {
            let datum = row.data().get(i?)?;
            if datum.null_value() == Some(true) {
                return None;
            }
            datum.scalar_value().map(str::to_owned)
        };
        let number = |i: Option<usize>| value(i).and_then(|v| v.parse::<i64>().ok());
        entries.push(Entry {
            time: value(Some(time)).unwrap_or_default(),
            stage: value(Some(stage)).unwrap_or_default(),
            status: value(Some(status)).unwrap_or_default(),
            previous_status: value(optional[0]),
            event_id: value(Some(event_id)).unwrap_or_default(),
            amount: value(optional[1]),
            currency: value(optional[2]),
            due_date: value(optional[3]),
            stage_latency_ms: number(optional[4]),
            end_to_end_latency_ms: number(optional[5]),
        });
    }
    Ok(entries)
}

/// `invoice`'s history in `spec`'s cell, oldest first.
pub async fn history(
    client: &aws_sdk_timestreamquery::Client,
    spec: &CellSpec,
    invoice: &InvoiceId,
) -> Result<Vec<Entry>, HistoryError> {
    let mut entries = Vec::new();
    for page in query_pages(client, &history_query(spec, invoice)).await.map_err(HistoryError::Query)? {
        entries.extend(parse_page(&page)?);
    }
    Ok(entries)
}

/// Every page of `query`'s answer, following `NextToken`; a failed call as
/// one line.
pub async fn query_pages(
    client: &aws_sdk_timestreamquery::Client,
    query: &str,
) -> Result<Vec<QueryOutput>, crate::CallError> {
    let mut pages = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = client
            .query()
            .query_string(query)
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| crate::CallError::new("query", e))?;
        token = page.next_token().map(str::to_owned);
        pages.push(page);
        if token.is_none() {
            return Ok(pages);
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_timestreamquery::types::{ColumnInfo, Datum, Row, ScalarType, Type};

    use super::*;

    fn spec() -> CellSpec {
        CellSpec::new(
            bems_core::fields::CellId::new("prod-eu-1").expect("cell"),
            bems_core::fields::Region::new("eu-west-1").expect("region"),
            bems_core::fields::AccountId::new("123456789012").expect("account"),
            bems_core::partition::PartitionCount::new(16).expect("partitions"),
        )
        .expect("spec")
    }

    fn column(name: &str, scalar: ScalarType) -> ColumnInfo {
        ColumnInfo::builder().name(name).r#type(Type::builder().scalar_type(scalar).build()).build()
    }

    fn datum(v: Option<&str>) -> Datum {
        match v {
            Some(v) => Datum::builder().scalar_value(v).build(),
            None => Datum::builder().null_value(true).build(),
        }
    }

    #[test]
    fn the_query_names_the_cells_table_and_the_invoice() {
        let invoice = InvoiceId::new("INV-2026-000123").expect("id");
        assert_eq!(
            history_query(&spec(), &invoice),
            "SELECT time, stage, status, previous_status, event_id, amount, currency, due_date, \
             stage_latency_ms, end_to_end_latency_ms FROM \"bems_prod_eu_1\".\"status_changes\" \
             WHERE measure_name = 'status_change' AND invoice_id = 'INV-2026-000123' ORDER BY time ASC"
        );
    }

    /// A canned answer as Timestream shapes it (column order differs from
    /// the query's on purpose, and the first record has no previous status
    /// or latencies).
    #[test]
    fn rows_are_read_by_column_name_with_nulls_as_none() {
        let columns = [
            column("stage", ScalarType::Varchar),
            column("time", ScalarType::Timestamp),
            column("status", ScalarType::Varchar),
            column("previous_status", ScalarType::Varchar),
            column("event_id", ScalarType::Varchar),
            column("amount", ScalarType::Double),
            column("currency", ScalarType::Varchar),
            column("due_date", ScalarType::Varchar),
            column("stage_latency_ms", ScalarType::Bigint),
            column("end_to_end_latency_ms", ScalarType::Bigint),
        ];
        let row = |values: [Option<&str>; 10]| {
            Row::builder().set_data(Some(values.map(datum).to_vec())).build().expect("row")
        };
        let page = QueryOutput::builder()
            .query_id("q-1")
            .set_column_info(Some(columns.to_vec()))
            .rows(row([
                Some("ingestion"),
                Some("2026-11-26 13:45:00.123000000"),
                Some("submitted"),
                None,
                Some("0b9c6f5e-3c1f-4d8e-9a51-2f7f2c1d4e11"),
                Some("1250.5"),
                Some("EUR"),
                Some("2026-12-25"),
                None,
                None,
            ]))
            .rows(row([
                Some("reconciliation"),
                Some("2026-11-26 13:45:01.346000000"),
                Some("ingested"),
                Some("submitted"),
                Some("5d0e8c1a-7b2f-4c3d-8e9f-1a2b3c4d5e6f"),
                Some("1250.5"),
                Some("EUR"),
                Some("2026-12-25"),
                Some("1223"),
                Some("1223"),
            ]))
            .build()
            .expect("output");
        let entries = parse_page(&page).expect("parsed");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].status, "submitted");
        assert_eq!(entries[0].previous_status, None);
        assert_eq!(entries[0].stage_latency_ms, None);
        assert_eq!(entries[1].time, "2026-11-26 13:45:01.346000000");
        assert_eq!(entries[1].stage, "reconciliation");
        assert_eq!(entries[1].previous_status.as_deref(), Some("submitted"));
        assert_eq!(entries[1].amount.as_deref(), Some("1250.5"));
        assert_eq!(entries[1].end_to_end_latency_ms, Some(1223));
    }

    #[test]
    fn an_answer_without_the_needed_columns_is_an_error_naming_the_column() {
        let page = QueryOutput::builder()
            .query_id("q-2")
            .set_column_info(Some(vec![column("time", ScalarType::Timestamp)]))
            .rows(Row::builder().data(datum(Some("2026-11-26 13:45:00.123000000"))).build().expect("row"))
            .build()
            .expect("output");
        assert!(matches!(parse_page(&page), Err(HistoryError::MissingColumn("stage"))));
        // An empty answer may come without columns: no history, no error.
        let empty = QueryOutput::builder().query_id("q-3").set_column_info(Some(Vec::new())).set_rows(Some(Vec::new()));
        assert_eq!(parse_page(&empty.build().expect("output")).expect("empty"), Vec::new());
    }
}
