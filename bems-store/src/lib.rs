//! # bems-store
//!
//! Where a BEMS cell keeps its status changes, and how everything reads
//! them: the auditors' history, the stuck-invoice check, the executive,
//! operations and finance panels.
//!
//! Two engines:
//!
//! - **PostgreSQL** (feature `postgres`, on by default): one row per status
//!   change in a table partitioned by month, every version of a row kept,
//!   an invoices table for the history and stuck queries, per-minute
//!   rollups for the panels, written in the writer's transaction; the
//!   committed migrations, partitions made ahead, an idempotent batch
//!   writer with Timestream's contract, and an export with a manifest.
//!   Aurora PostgreSQL and RDS for PostgreSQL run it on AWS.
//! - **Timestream for LiveAnalytics** (feature `timestream`): its queries.
//!   Its writer is `bems_lambda::timestream`. It is closed to new AWS
//!   customers since 2025-06-20; existing ones keep it.
//!
//! ## Layout
//!
//! - [`row`]: [`StatusRow`], a status change as stored, from an event and
//!   its version.
//! - [`query`]: the query layer, [`query::Queries`], and its answers.
//! - [`histogram`]: the latency histograms of the rollups and their
//!   percentiles, with the error stated.
//! - [`postgres`]: the PostgreSQL store, on a connection or (feature
//!   `data-api`) through the RDS Data API.
//! - [`timestream`]: the Timestream queries.
//!
//! [`Store`] is either engine behind one type, for a program that picks
//! one at run time (the CLI, the monitor).
//!
//! ## Example
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use bems_store::postgres::{Postgres, PgQueries, Schema, migrate, partitions};
//! use bems_store::query::Queries;
//!
//! let pg = Postgres::new("postgres://bems:bems@127.0.0.1:5499/bems", Schema::new("bems_prod_eu_1")?)?;
//! let mut admin = pg.connect().await?;
//! migrate::migrate(&mut admin, pg.schema()).await?;
//! partitions::ensure(&mut admin, pg.schema(), chrono::Utc::now(), 3).await?;
//! for entry in PgQueries::new(pg).history("INV-2026-000123").await? {
//!     println!("{} {} {}", entry.occurred_at, entry.stage, entry.status);
//! }
//! # Ok(())
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod histogram;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
pub mod query;
pub mod row;
#[cfg(feature = "timestream")]
#[cfg_attr(docsrs, doc(cfg(feature = "timestream")))]
pub mod timestream;

pub use row::StatusRow;

/// Either engine's query layer, for a program that picks one at run time.
#[cfg(any(feature = "postgres", feature = "timestream"))]
#[derive(Debug)]
#[non_exhaustive]
pub enum Store {
    /// PostgreSQL, on a connection.
    #[cfg(feature = "postgres")]
    Postgres(Box<postgres::PgQueries>),
    /// PostgreSQL (Aurora) through the RDS Data API.
    #[cfg(feature = "data-api")]
    DataApi(Box<postgres::data_api::DataApi>),
    /// Timestream for LiveAnalytics.
    #[cfg(feature = "timestream")]
    Timestream(timestream::TimestreamQueries),
}

#[cfg(any(feature = "postgres", feature = "timestream"))]
impl Store {
    /// What it is, in one line (`postgres bems@host:5432/bems schema
    /// bems_prod_eu_1`), without secrets.
    pub fn describe(&self) -> String {
        match self {
            #[cfg(feature = "postgres")]
            Store::Postgres(q) => format!("postgres {} schema {}", q.postgres().describe(), q.postgres().schema()),
            #[cfg(feature = "data-api")]
            Store::DataApi(q) => format!("postgres {} schema {}", q.describe(), postgres::SqlStore::schema(&**q)),
            #[cfg(feature = "timestream")]
            Store::Timestream(q) => format!("timestream {}", q.table()),
        }
    }
}

/// Forwards each question to the engine.
#[cfg(any(feature = "postgres", feature = "timestream"))]
macro_rules! each_engine {
    ($self:ident, $q:ident => $call:expr) => {
        match $self {
            #[cfg(feature = "postgres")]
            Store::Postgres($q) => $call,
            #[cfg(feature = "data-api")]
            Store::DataApi($q) => $call,
            #[cfg(feature = "timestream")]
            Store::Timestream($q) => $call,
        }
    };
}

#[cfg(any(feature = "postgres", feature = "timestream"))]
impl query::Queries for Store {
    async fn history(&self, invoice: &str) -> Result<Vec<query::HistoryEntry>, query::QueryError> {
        each_engine!(self, q => q.history(invoice).await)
    }

    async fn versions(&self, invoice: &str) -> Result<Vec<query::HistoryEntry>, query::QueryError> {
        each_engine!(self, q => q.versions(invoice).await)
    }

    async fn archived(&self, invoice: &str) -> Result<Vec<query::ArchivedMonth>, query::QueryError> {
        each_engine!(self, q => q.archived(invoice).await)
    }

    async fn open_invoices(
        &self,
        window: query::Window,
        sla_secs: u32,
        limit: u32,
    ) -> Result<Vec<query::OpenInvoice>, query::QueryError> {
        each_engine!(self, q => q.open_invoices(window, sla_secs, limit).await)
    }

    async fn stage_counts(
        &self,
        window: query::Window,
        bucket_secs: u32,
    ) -> Result<Vec<query::StageCount>, query::QueryError> {
        each_engine!(self, q => q.stage_counts(window, bucket_secs).await)
    }

    async fn latencies(&self, window: query::Window) -> Result<query::Latencies, query::QueryError> {
        each_engine!(self, q => q.latencies(window).await)
    }

    async fn money(&self, window: query::Window) -> Result<Vec<query::MoneyRow>, query::QueryError> {
        each_engine!(self, q => q.money(window).await)
    }

    async fn largest_submitted(
        &self,
        window: query::Window,
        rates: &[(&str, f64)],
        limit: u32,
    ) -> Result<Vec<query::Submitted>, query::QueryError> {
        each_engine!(self, q => q.largest_submitted(window, rates, limit).await)
    }

    async fn visible(&self, window: query::Window) -> Result<u64, query::QueryError> {
        each_engine!(self, q => q.visible(window).await)
    }
}
