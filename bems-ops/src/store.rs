//! The cell's store, as the operations read it: PostgreSQL (a connection
//! string, or an Aurora cluster through the RDS Data API) or Timestream
//! (the standard AWS chain), behind [`bems_store::Store`] and its query
//! layer.

use bems_core::routing::CellSpec;
use bems_store::Store;
use bems_store::postgres::data_api::DataApi;
use bems_store::postgres::{PgQueries, Postgres, Schema};

/// Which store a cell has, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// PostgreSQL at this connection string (the cell's schema in it).
    Postgres {
        /// `postgres://user:password@host:port/database`.
        url: String,
    },
    /// An Aurora cluster's database through the RDS Data API, with the
    /// standard AWS chain's credentials: no network route into its VPC.
    DataApi(DataApiTarget),
    /// The cell's Timestream table, through the standard AWS chain.
    Timestream {
        /// A query endpoint to use instead of endpoint discovery (an
        /// emulator's).
        endpoint: Option<String>,
    },
}

/// Where the Data API reaches the store: the cluster, the secret of the
/// user it runs as, the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataApiTarget {
    /// The cluster's ARN (the template's `DatabaseClusterArn` output).
    pub cluster_arn: String,
    /// The secret's ARN: a password login's, since the Data API takes no
    /// IAM token: `DatabaseReaderSecretArn` (`bems_api_reader`, SELECT
    /// only) for reads, `DatabaseSecretArn` (the master user's) for
    /// migrations, partitions and archives.
    pub secret_arn: String,
    /// The database (`bems`).
    pub database: String,
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
        StoreChoice::DataApi(target) => Store::DataApi(Box::new(data_api(target, spec, config))),
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

/// `spec`'s PostgreSQL store through the Data API at `target`.
pub fn data_api(target: &DataApiTarget, spec: &CellSpec, config: &aws_config::SdkConfig) -> DataApi {
    DataApi::new(
        aws_sdk_rdsdata::Client::new(config),
        &target.cluster_arn,
        &target.secret_arn,
        &target.database,
        Schema::of_cell(spec.cell_id()),
    )
}
