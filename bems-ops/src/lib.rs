//! # bems-ops
//!
//! Operating a BEMS cell, as a library: what the `bems` CLI runs, and what
//! the local cell's dashboard and the end-to-end tests share with it.
//!
//! ## Layout
//!
//! - [`provision`]: deploys a cell on LocalStack as the cell template's
//!   emulator part ([`bems_template::emulator_template`]) through
//!   CloudFormation, idempotently, and deletes it ([`provision::teardown`]).
//! - [`ingress`]: a deployed ingress's URLs, API and producers' key.
//! - [`redrive`]: moves dead-lettered messages back to their queue,
//!   FIFO-safe and loss-free, all of them or one invoice's.
//! - [`stuck`]: which invoices are stuck (in a DLQ, or over the SLA) and
//!   alerting once per stuck invoice.
//! - [`send`]: one event from a file, validated field by field, published.
//! - [`store`]: the cell's store (PostgreSQL or Timestream) behind the
//!   query layer of `bems-store`: `bems history`, the over-SLA check,
//!   the smoke test's last step.
//! - [`replay`]: archived events of a time window back on the bus.
//! - [`archive`]: S3 as the place `bems store archive` moves old months
//!   of the PostgreSQL store to.
//! - [`smoke`]: one marked invoice through a deployed cell's API, followed
//!   through every stage into the store (`bems smoke`).
//!
//! Names of the cell's resources come from `bems_core::contract`, the
//! template from `bems-template`; every operation reads the standard AWS
//! configuration chain, so `AWS_ENDPOINT_URL=http://127.0.0.1:4566` points
//! it at LocalStack.

pub mod archive;
pub mod ingress;
pub mod provision;
pub mod redrive;
pub mod replay;
pub mod send;
pub mod smoke;
pub mod store;
pub mod stuck;

/// The AWS configuration from the standard chain (environment, profile,
/// `AWS_ENDPOINT_URL`, ...), with `region` when given.
pub async fn aws_config(region: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    loader.load().await
}

/// An AWS call that failed: what was being done, what the service said
/// (its code and message, or the transport failure), and the SDK's error.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {message}")]
pub struct CallError {
    /// What was being done: `list stacks`, `queue bems-c1-status.fifo`.
    pub step: String,
    /// What the service said, in one line.
    pub message: String,
    /// The SDK's error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl CallError {
    /// The failed call `step`, from the SDK's error.
    pub fn new<E>(step: impl Into<String>, e: E) -> CallError
    where
        E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        CallError { step: step.into(), message: describe(&e), source: Box::new(e) }
    }
}

/// Whether `endpoint` is a LocalStack instance (it answers
/// `/_localstack/health`).
pub fn is_localstack(endpoint: &str) -> bool {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(3)))
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{}/_localstack/health", endpoint.trim_end_matches('/'));
    agent
        .get(&url)
        .call()
        .ok()
        .filter(|r| r.status() == 200)
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .is_some_and(|body| body.contains("\"services\""))
}

/// An AWS SDK error as one short line (`bems_core::retry::describe`).
pub(crate) use bems_core::retry::describe;
