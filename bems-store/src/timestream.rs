//! The query layer on Timestream for LiveAnalytics: the same questions as
//! on PostgreSQL, in Timestream's SQL over the cell's table (the records
//! `bems_lambda::timestream` writes), answered page by page through
//! `NextToken` and read by column name.
//!
//! What Timestream cannot answer: the versions of a row (a correction
//! replaces the record; [`QueryError::Unsupported`]), the visibility latency
//! (it keeps no store time; the writer's `VisibilityLatency` metric has it),
//! and the rejection reason (not a measure). Its records have no producer,
//! so the business figures leave out synthetic invoices by their id
//! ([`bems_core::contract::SMOKE_INVOICE_PREFIX`], which every canary has).
//! Amounts are doubles there: exact to 15 significant digits, sums as
//! Timestream adds them.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_timestreamquery::operation::query::QueryOutput;
use bems_core::contract::{SMOKE_INVOICE_PREFIX, TIMESTREAM_TABLE, columns};
use bems_core::routing::CellSpec;
use bems_core::{Stage, Status};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use rust_decimal::Decimal;

use crate::histogram::LatencySummary;
use crate::query::{
    HistoryEntry, Latencies, MoneyRow, OpenInvoice, Queries, QueryError, StageCount, Submitted, Window, week_start,
};

const ENGINE: &str = "timestream";

/// The query layer over one cell's Timestream table.
#[derive(Debug, Clone)]
pub struct TimestreamQueries {
    client: aws_sdk_timestreamquery::Client,
    table: String,
}

/// `client` ready to query: Timestream requires endpoint discovery
/// (refreshed in the background), unless the client was given an endpoint
/// URL (`explicit_endpoint`: an emulator), which then answers itself.
pub async fn query_client(
    client: aws_sdk_timestreamquery::Client,
    explicit_endpoint: bool,
) -> Result<aws_sdk_timestreamquery::Client, QueryError> {
    if explicit_endpoint {
        return Ok(client);
    }
    let (client, reloader) = client.with_endpoint_discovery_enabled().await.map_err(|e| QueryError::Engine {
        engine: ENGINE,
        message: format!("endpoint discovery: {e}"),
        transient: true,
        source: e,
    })?;
    tokio::spawn(reloader.reload_task());
    Ok(client)
}

fn ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

/// The window's condition on `time`: `time >= ago(60m)` for the last
/// minutes (the same text every poll), else the two bounds.
fn in_window(window: Window) -> String {
    match window.last_minutes {
        Some(m) => format!("time >= ago({m}m)"),
        None => {
            format!("time >= from_milliseconds({}) AND time < from_milliseconds({})", ms(window.from), ms(window.to))
        }
    }
}

/// A query's rows by column name (nulls left out).
pub type Rows = Vec<HashMap<String, String>>;

/// The rows of every page of an answer, by column name.
pub fn rows(pages: &[QueryOutput]) -> Rows {
    let mut out = Vec::new();
    for page in pages {
        let names: Vec<&str> = page.column_info().iter().map(|c| c.name().unwrap_or_default()).collect();
        for row in page.rows() {
            let named = names
                .iter()
                .zip(row.data())
                .filter(|(_, d)| d.null_value() != Some(true))
                .filter_map(|(c, d)| d.scalar_value().map(|v| ((*c).to_owned(), v.to_owned())))
                .collect();
            out.push(named);
        }
    }
    out
}

/// Reads one row's values, naming the query in its errors.
struct Row<'a> {
    row: &'a HashMap<String, String>,
    query: &'static str,
}

impl Row<'_> {
    fn text(&self, column: &'static str) -> Result<&str, QueryError> {
        self.row.get(column).map(String::as_str).ok_or(QueryError::MissingColumn {
            engine: ENGINE,
            query: self.query,
            column,
        })
    }

    fn optional(&self, column: &str) -> Option<&str> {
        self.row.get(column).map(String::as_str)
    }

    fn parsed<T: std::str::FromStr>(&self, column: &'static str) -> Result<T, QueryError> {
        let text = self.text(column)?;
        text.parse().map_err(|_| self.bad(column, text))
    }

    fn bad(&self, column: &'static str, value: &str) -> QueryError {
        QueryError::BadValue { engine: ENGINE, query: self.query, column, value: value.to_owned() }
    }

    fn time(&self, column: &'static str) -> Result<DateTime<Utc>, QueryError> {
        let text = self.text(column)?;
        parse_time(text).ok_or_else(|| self.bad(column, text))
    }

    fn stage(&self) -> Result<Stage, QueryError> {
        let text = self.text(columns::STAGE)?;
        Stage::from_wire(text).ok_or_else(|| self.bad(columns::STAGE, text))
    }

    fn status(&self, column: &'static str) -> Result<Status, QueryError> {
        let text = self.text(column)?;
        Status::from_wire(text).ok_or_else(|| self.bad(column, text))
    }

    fn decimal(&self, column: &'static str) -> Result<Decimal, QueryError> {
        let text = self.text(column)?;
        decimal(text).ok_or_else(|| self.bad(column, text))
    }
}

/// A Timestream timestamp (`2026-11-26 13:45:00.123000000`, UTC).
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").ok().map(|t| t.and_utc())
}

fn decimal(text: &str) -> Option<Decimal> {
    Decimal::from_str_exact(text).or_else(|_| Decimal::from_scientific(text)).ok()
}

impl TimestreamQueries {
    /// The query layer over `spec`'s table, through `client`.
    pub fn new(client: aws_sdk_timestreamquery::Client, spec: &CellSpec) -> TimestreamQueries {
        TimestreamQueries { client, table: format!("\"{}\".\"{TIMESTREAM_TABLE}\"", spec.timestream_database()) }
    }

    /// The table, `"database"."table"`.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Every page of `query`'s answer.
    pub async fn pages(&self, query: &str) -> Result<Vec<QueryOutput>, QueryError> {
        let mut pages = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.client.query().query_string(query).set_next_token(token).send().await.map_err(|e| {
                QueryError::Engine {
                    engine: ENGINE,
                    message: bems_core::retry::describe(&e),
                    transient: bems_core::retry::is_transient(&e),
                    source: Box::new(e),
                }
            })?;
            token = page.next_token().map(str::to_owned);
            pages.push(page);
            if token.is_none() {
                return Ok(pages);
            }
        }
    }

    async fn rows(&self, query: &str) -> Result<Rows, QueryError> {
        Ok(rows(&self.pages(query).await?))
    }

    fn base(window: Window) -> String {
        format!("measure_name = '{}' AND {}", columns::MEASURE_NAME, in_window(window))
    }

    fn business(window: Window) -> String {
        format!("{} AND invoice_id NOT LIKE '{SMOKE_INVOICE_PREFIX}%'", TimestreamQueries::base(window))
    }

    /// The history query of `invoice`.
    pub fn history_query(&self, invoice: &str) -> String {
        // Invoice ids are validated; the quote is doubled anyway, as SQL wants.
        let id = invoice.replace('\'', "''");
        format!(
            "SELECT time, stage, status, previous_status, event_id, amount, currency, due_date, \
             stage_latency_ms, end_to_end_latency_ms FROM {} \
             WHERE measure_name = '{}' AND invoice_id = '{id}' ORDER BY time ASC",
            self.table,
            columns::MEASURE_NAME
        )
    }

    /// The open-invoices query.
    pub fn open_query(&self, window: Window, sla_secs: u32, limit: u32) -> String {
        let terminal: Vec<String> =
            Status::ALL.into_iter().filter(|s| s.is_terminal()).map(|s| format!("'{}'", s.as_str())).collect();
        let cutoff = match window.last_minutes {
            Some(_) => format!("ago({sla_secs}s)"),
            None => format!("from_milliseconds({})", ms(window.to) - i64::from(sla_secs) * 1000),
        };
        format!(
            "SELECT invoice_id, max_by(stage, time) AS stage, max_by(status, time) AS status, \
             max_by(event_id, time) AS event_id, max(time) AS last_change FROM {} \
             WHERE {} GROUP BY invoice_id \
             HAVING max_by(status, time) NOT IN ({}) AND max(time) < {cutoff} \
             ORDER BY last_change ASC LIMIT {limit}",
            self.table,
            TimestreamQueries::base(window),
            terminal.join(", "),
        )
    }

    /// The stage-counts query.
    pub fn stage_counts_query(&self, window: Window, bucket_secs: u32) -> String {
        format!(
            "SELECT to_milliseconds(bin(time, {bucket_secs}s)) AS bucket_ms, stage, count(*) AS changes FROM {} \
             WHERE {} GROUP BY bin(time, {bucket_secs}s), stage ORDER BY bucket_ms",
            self.table,
            TimestreamQueries::business(window)
        )
    }

    /// The latencies query.
    pub fn latencies_query(&self, window: Window) -> String {
        let p = |q: &str| format!("approx_percentile(stage_latency_ms, {q}) AS stage_{}", &q[2..]);
        format!(
            "SELECT count(stage_latency_ms) AS stage_n, {}, {}, {}, \
             count_if(status = 'posted' AND end_to_end_latency_ms IS NOT NULL) AS e2e_n, \
             approx_percentile(CASE WHEN status = 'posted' THEN end_to_end_latency_ms END, 0.5) AS e2e_5, \
             approx_percentile(CASE WHEN status = 'posted' THEN end_to_end_latency_ms END, 0.9) AS e2e_9, \
             approx_percentile(CASE WHEN status = 'posted' THEN end_to_end_latency_ms END, 0.99) AS e2e_99 \
             FROM {} WHERE {}",
            p("0.5"),
            p("0.9"),
            p("0.99"),
            self.table,
            TimestreamQueries::business(window)
        )
    }

    /// The money query.
    pub fn money_query(&self, window: Window) -> String {
        format!(
            "SELECT currency, due_date, net_days, count(*) AS invoices, sum(amount) AS amount FROM {} \
             WHERE {} AND status = 'submitted' GROUP BY currency, due_date, net_days",
            self.table,
            TimestreamQueries::business(window)
        )
    }

    /// The largest-invoices query at `rates`.
    pub fn largest_query(&self, window: Window, rates: &[(&str, f64)], limit: u32) -> String {
        let case: String = rates
            .iter()
            .filter(|(c, _)| c.bytes().all(|b| b.is_ascii_uppercase()))
            .map(|(c, r)| format!(" WHEN '{c}' THEN {r:?}"))
            .collect();
        format!(
            "SELECT invoice_id, amount, currency, vendor_id, due_date FROM {} WHERE {} AND status = 'submitted' \
             ORDER BY amount * CASE currency{case} ELSE 1.0 END DESC, invoice_id LIMIT {limit}",
            self.table,
            TimestreamQueries::business(window)
        )
    }

    /// The visible-count query.
    pub fn visible_query(&self, window: Window) -> String {
        format!("SELECT count(*) AS changes FROM {} WHERE {}", self.table, TimestreamQueries::base(window))
    }
}

/// History entries from the history query's rows.
pub fn history_entries(rows: &Rows) -> Result<Vec<HistoryEntry>, QueryError> {
    rows.iter()
        .map(|row| {
            let r = Row { row, query: "history" };
            Ok(HistoryEntry {
                occurred_at: r.time("time")?,
                stage: r.stage()?,
                status: r.status(columns::STATUS)?,
                previous_status: r.optional(columns::PREVIOUS_STATUS).and_then(Status::from_wire),
                event_id: r.text(columns::EVENT_ID)?.to_owned(),
                amount: r.optional(columns::AMOUNT).and_then(decimal),
                currency: r.optional(columns::CURRENCY).map(str::to_owned),
                due_date: r.optional(columns::DUE_DATE).and_then(|d| d.parse().ok()),
                stage_latency_ms: r.optional(columns::STAGE_LATENCY_MS).and_then(|v| v.parse().ok()),
                end_to_end_latency_ms: r.optional(columns::END_TO_END_LATENCY_MS).and_then(|v| v.parse().ok()),
                reason: None,
                version: None,
                stored_at: None,
            })
        })
        .collect()
}

/// The latencies query's figures for `prefix` (`stage`, `e2e`): its count
/// and `approx_percentile` at 0.5, 0.9 and 0.99.
fn summary(r: &Row<'_>, prefix: &str) -> LatencySummary {
    #[allow(clippy::cast_possible_truncation, reason = "milliseconds")]
    let ms =
        |q: &str| r.optional(&format!("{prefix}_{q}")).and_then(|v| v.parse::<f64>().ok()).map(|v| v.round() as i64);
    let n = r.optional(&format!("{prefix}_n")).and_then(|v| v.parse().ok()).unwrap_or(0);
    LatencySummary::exact(n, ms("5"), ms("9"), ms("99"))
}

impl Queries for TimestreamQueries {
    async fn history(&self, invoice: &str) -> Result<Vec<HistoryEntry>, QueryError> {
        history_entries(&self.rows(&self.history_query(invoice)).await?)
    }

    async fn versions(&self, _: &str) -> Result<Vec<HistoryEntry>, QueryError> {
        Err(QueryError::Unsupported { engine: ENGINE, what: "the versions of a row (a correction replaces it)" })
    }

    /// None: Timestream keeps its rows for the table's retention and
    /// moves none elsewhere.
    async fn archived(&self, _: &str) -> Result<Vec<crate::query::ArchivedMonth>, QueryError> {
        Ok(Vec::new())
    }

    async fn open_invoices(&self, window: Window, sla_secs: u32, limit: u32) -> Result<Vec<OpenInvoice>, QueryError> {
        let rows = self.rows(&self.open_query(window, sla_secs, limit)).await?;
        rows.iter()
            .map(|row| {
                let r = Row { row, query: "open invoices" };
                Ok(OpenInvoice {
                    invoice_id: r.text(columns::INVOICE_ID)?.to_owned(),
                    stage: r.stage()?,
                    status: r.status(columns::STATUS)?,
                    event_id: r.text(columns::EVENT_ID)?.to_owned(),
                    last_change: r.time("last_change")?,
                })
            })
            .collect()
    }

    async fn stage_counts(&self, window: Window, bucket_secs: u32) -> Result<Vec<StageCount>, QueryError> {
        let rows = self.rows(&self.stage_counts_query(window, bucket_secs.max(1))).await?;
        rows.iter()
            .map(|row| {
                let r = Row { row, query: "stage counts" };
                let at: i64 = r.parsed("bucket_ms")?;
                Ok(StageCount {
                    bucket: DateTime::from_timestamp_millis(at).unwrap_or_default(),
                    stage: r.stage()?,
                    changes: r.parsed("changes")?,
                })
            })
            .collect()
    }

    async fn latencies(&self, window: Window) -> Result<Latencies, QueryError> {
        let rows = self.rows(&self.latencies_query(window)).await?;
        let Some(row) = rows.first() else { return Ok(Latencies::default()) };
        let r = Row { row, query: "latencies" };
        Ok(Latencies { visibility: None, stage: summary(&r, "stage"), end_to_end: summary(&r, "e2e") })
    }

    async fn money(&self, window: Window) -> Result<Vec<MoneyRow>, QueryError> {
        let rows = self.rows(&self.money_query(window)).await?;
        let mut out: BTreeMap<(String, NaiveDate, i16), (u64, Decimal)> = BTreeMap::new();
        for row in &rows {
            let r = Row { row, query: "money" };
            let due: NaiveDate = r.parsed(columns::DUE_DATE)?;
            let key = (r.text(columns::CURRENCY)?.to_owned(), week_start(due), r.parsed(columns::NET_DAYS)?);
            let e = out.entry(key).or_default();
            e.0 += r.parsed::<u64>("invoices")?;
            e.1 += r.decimal(columns::AMOUNT)?;
        }
        Ok(out
            .into_iter()
            .map(|((currency, due_week, net_days), (invoices, amount))| MoneyRow {
                currency,
                due_week,
                net_days,
                invoices,
                amount,
            })
            .collect())
    }

    async fn largest_submitted(
        &self,
        window: Window,
        rates: &[(&str, f64)],
        limit: u32,
    ) -> Result<Vec<Submitted>, QueryError> {
        let rows = self.rows(&self.largest_query(window, rates, limit)).await?;
        rows.iter()
            .map(|row| {
                let r = Row { row, query: "largest submitted" };
                Ok(Submitted {
                    invoice_id: r.text(columns::INVOICE_ID)?.to_owned(),
                    amount: r.decimal(columns::AMOUNT)?,
                    currency: r.text(columns::CURRENCY)?.to_owned(),
                    vendor_id: r.optional(columns::VENDOR_ID).unwrap_or_default().to_owned(),
                    due_date: r.parsed(columns::DUE_DATE)?,
                })
            })
            .collect()
    }

    async fn visible(&self, window: Window) -> Result<u64, QueryError> {
        let rows = self.rows(&self.visible_query(window)).await?;
        match rows.first() {
            Some(row) => Row { row, query: "visible" }.parsed("changes"),
            None => Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_timestreamquery::types::{ColumnInfo, Datum, Row as SdkRow};

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

    fn queries() -> TimestreamQueries {
        let config = aws_sdk_timestreamquery::config::Builder::new()
            .behavior_version(aws_sdk_timestreamquery::config::BehaviorVersion::latest())
            .region(aws_sdk_timestreamquery::config::Region::new("eu-west-1"))
            .build();
        TimestreamQueries::new(aws_sdk_timestreamquery::Client::from_conf(config), &spec())
    }

    /// A canned answer as Timestream shapes it: columns, then rows of
    /// scalar text, `None` for null.
    fn page(columns: &[&str], rows: &[&[Option<&str>]]) -> QueryOutput {
        let mut out = QueryOutput::builder()
            .query_id("q")
            .set_column_info(Some(columns.iter().map(|c| ColumnInfo::builder().name(*c).build()).collect()));
        for row in rows {
            let data = row
                .iter()
                .map(|v| match v {
                    Some(v) => Datum::builder().scalar_value(*v).build(),
                    None => Datum::builder().null_value(true).build(),
                })
                .collect();
            out = out.rows(SdkRow::builder().set_data(Some(data)).build().expect("row"));
        }
        out.build().expect("output")
    }

    fn window() -> Window {
        Window::between("2026-11-26T13:00:00Z".parse().expect("time"), "2026-11-26T14:00:00Z".parse().expect("time"))
    }

    #[test]
    fn the_queries_name_the_cell_s_table_its_window_and_leave_canaries_out_of_business_figures() {
        let q = queries();
        assert_eq!(
            q.history_query("INV-2026-000123"),
            "SELECT time, stage, status, previous_status, event_id, amount, currency, due_date, \
             stage_latency_ms, end_to_end_latency_ms FROM \"bems_prod_eu_1\".\"status_changes\" \
             WHERE measure_name = 'status_change' AND invoice_id = 'INV-2026-000123' ORDER BY time ASC"
        );
        assert_eq!(
            q.stage_counts_query(window(), 60),
            "SELECT to_milliseconds(bin(time, 60s)) AS bucket_ms, stage, count(*) AS changes \
             FROM \"bems_prod_eu_1\".\"status_changes\" WHERE measure_name = 'status_change' \
             AND time >= from_milliseconds(1795698000000) AND time < from_milliseconds(1795701600000) \
             AND invoice_id NOT LIKE 'BEMS-SMOKE-%' GROUP BY bin(time, 60s), stage ORDER BY bucket_ms"
        );
        assert!(q.open_query(window(), 120, 50).contains("NOT IN ('posted', 'rejected')"));
        let last_hour = Window::last_minutes(Utc::now(), 60);
        assert_eq!(
            q.open_query(last_hour, 120, 50),
            "SELECT invoice_id, max_by(stage, time) AS stage, max_by(status, time) AS status, \
             max_by(event_id, time) AS event_id, max(time) AS last_change FROM \"bems_prod_eu_1\".\"status_changes\" \
             WHERE measure_name = 'status_change' AND time >= ago(60m) GROUP BY invoice_id \
             HAVING max_by(status, time) NOT IN ('posted', 'rejected') AND max(time) < ago(120s) \
             ORDER BY last_change ASC LIMIT 50",
            "the last hour: the same text every poll"
        );
        assert!(!q.visible_query(window()).contains("BEMS-SMOKE"), "the visible count keeps canaries");
        let largest = q.largest_query(window(), &[("EUR", 1.0), ("JPY", 0.0062), ("x'; DROP", 2.0)], 10);
        assert!(largest.contains("CASE currency WHEN 'EUR' THEN 1.0 WHEN 'JPY' THEN 0.0062 ELSE 1.0 END"), "{largest}");
    }

    #[test]
    fn history_rows_are_read_by_name_with_nulls_as_none() {
        let answer = page(
            &[
                "stage",
                "time",
                "status",
                "previous_status",
                "event_id",
                "amount",
                "currency",
                "due_date",
                "stage_latency_ms",
                "end_to_end_latency_ms",
            ],
            &[
                &[
                    Some("ingestion"),
                    Some("2026-11-26 13:45:00.123000000"),
                    Some("submitted"),
                    None,
                    Some("e-1"),
                    Some("1250.5"),
                    Some("EUR"),
                    Some("2026-12-25"),
                    None,
                    None,
                ],
                &[
                    Some("reconciliation"),
                    Some("2026-11-26 13:45:01.346000000"),
                    Some("ingested"),
                    Some("submitted"),
                    Some("e-2"),
                    Some("1250.5"),
                    Some("EUR"),
                    Some("2026-12-25"),
                    Some("1223"),
                    Some("1223"),
                ],
            ],
        );
        let entries = history_entries(&rows(&[answer])).expect("entries");
        assert_eq!(entries.len(), 2);
        assert_eq!(
            (entries[0].status, entries[0].previous_status, entries[0].stage_latency_ms),
            (Status::Submitted, None, None)
        );
        assert_eq!(entries[1].occurred_at, "2026-11-26T13:45:01.346Z".parse::<DateTime<Utc>>().expect("time"));
        assert_eq!(entries[1].amount, Some("1250.5".parse().expect("decimal")));
        assert_eq!(entries[1].end_to_end_latency_ms, Some(1223));
        let broken = page(&["time"], &[&[Some("2026-11-26 13:45:00.123000000")]]);
        assert!(matches!(history_entries(&rows(&[broken])), Err(QueryError::MissingColumn { column: "stage", .. })));
    }
}
