//! The cell's store, as the operations read it: PostgreSQL (a connection
//! string) or Timestream (the standard AWS chain), behind
//! [`bems_store::Store`] and its query layer.

use bems_core::routing::CellSpec;
use bems_store::Store;
use bems_store::postgres::{PgQueries, Postgres, Schema};

/// Which store a cell has, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// PostgreSQL at this connection string (the cell's schema in it).
    Postgres {
        /// `postgres://user:password@host:port/database`.
        url: String,
    },
    /// The cell's Timestream table, through the standard AWS chain.
    Timestream {
        /// A query endpoint to use instead of endpoint discovery (an
        /// emulator's).
        endpoint: Option<String>,
    },
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The PostgreSQL configuration cannot work.
    #[error("store: {0}")]
    Postgres(#[from] bems_store::postgres::ConfigError),
    /// Timestream's endpoint discovery failed.
    #[error("store: {0}")]
    Timestream(#[from] bems_store::query::QueryError),
}

/// The query layer over `spec`'s store. PostgreSQL connects on its first
/// question; Timestream discovers its endpoint now.
pub async fn open(choice: &StoreChoice, spec: &CellSpec, config: &aws_config::SdkConfig) -> Result<Store, StoreError> {
    Ok(match choice {
        StoreChoice::Postgres { url } => Store::Postgres(Box::new(PgQueries::new(postgres(url, spec)?))),
        StoreChoice::Timestream { endpoint } => {
            // The service's own configuration: an `AWS_ENDPOINT_URL` in the
            // environment would otherwise win over an endpoint set on the
            // shared one.
            let mut builder = aws_sdk_timestreamquery::config::Builder::from(config);
            if let Some(url) = endpoint {
                builder = builder.endpoint_url(url);
            }
            let explicit = endpoint.is_some() || config.endpoint_url().is_some();
            let client = aws_sdk_timestreamquery::Client::from_conf(builder.build());
            let client = bems_store::timestream::query_client(client, explicit).await?;
            Store::Timestream(bems_store::timestream::TimestreamQueries::new(client, spec))
        }
    })
}

/// `spec`'s PostgreSQL store at `url`.
pub fn postgres(url: &str, spec: &CellSpec) -> Result<Postgres, bems_store::postgres::ConfigError> {
    Postgres::new(url, Schema::of_cell(spec.cell_id()))
}
