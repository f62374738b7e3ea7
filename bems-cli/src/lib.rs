//! # bems-cli
//!
//! The operator's side of BEMS, as a library and as the `bems` binary.
//!
//! ## Layout
//!
//! - [`provision`]: creates or corrects a cell's resources from its
//!   `CellSpec`, idempotently, and reports what it did.
//! - [`api`]: the API Gateway ingress (`POST /invoices/<stage>`), part of
//!   provisioning.
//! - [`redrive`]: moves dead-lettered messages back to their queue,
//!   FIFO-safe and loss-free, all of them or one invoice's.
//! - [`stuck`]: which invoices are stuck (in a DLQ, or over the SLA) and
//!   alerting once per stuck invoice.
//! - [`send`]: one event from a file, validated field by field, published.
//! - [`history`]: an invoice's lifecycle from Timestream.
//! - [`replay`]: archived events of a time window back on the bus.
//! - [`smoke`]: one marked invoice through a deployed cell's API, followed
//!   through every stage into the store (`bems smoke`).
//! - [`teardown`]: deletes a cell's resources (the inverse of provision).
//! - [`template`]: the cell's CloudFormation template, generated from the
//!   same `CellSpec` (`bems template`).
//!
//! The binary (`src/main.rs`) only parses arguments and prints. Every
//! command reads the standard AWS configuration chain, so
//! `AWS_ENDPOINT_URL=http://127.0.0.1:4566` points it at LocalStack.

pub mod api;
pub mod history;
mod policy;
pub mod provision;
pub mod redrive;
pub mod replay;
pub mod send;
pub mod smoke;
pub mod stuck;
pub mod teardown;
pub mod template;

/// The AWS configuration from the standard chain (environment, profile,
/// `AWS_ENDPOINT_URL`, ...), with `region` when given.
pub async fn aws_config(region: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    loader.load().await
}

/// A Timestream query client. Timestream requires endpoint discovery; an
/// emulator configured with an endpoint URL answers at its own address.
pub async fn timestream_query(config: &aws_config::SdkConfig) -> anyhow::Result<aws_sdk_timestreamquery::Client> {
    let client = aws_sdk_timestreamquery::Client::new(config);
    if config.endpoint_url().is_some() {
        return Ok(client);
    }
    let (client, reloader) = client
        .with_endpoint_discovery_enabled()
        .await
        .map_err(|e| anyhow::anyhow!("Timestream endpoint discovery: {e}"))?;
    tokio::spawn(reloader.reload_task());
    Ok(client)
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

/// An AWS SDK error as one short line: the service's code and message when
/// the service answered (the raw response stays out of it), otherwise the
/// transport failure (connection refused, timeout), so that a dead endpoint
/// is named as such.
pub(crate) fn describe<E>(e: &E) -> String
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    match (e.code(), e.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        _ => aws_sdk_sqs::error::DisplayErrorContext(e).to_string(),
    }
}
