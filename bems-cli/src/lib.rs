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
//!   FIFO-safe and loss-free.
//! - [`teardown`]: deletes a cell's resources (the inverse of provision).
//! - [`template`]: the cell's CloudFormation template, generated from the
//!   same `CellSpec` (`bems template`).
//!
//! The binary (`src/main.rs`) only parses arguments and prints. Every
//! command reads the standard AWS configuration chain, so
//! `AWS_ENDPOINT_URL=http://127.0.0.1:4566` points it at LocalStack.

pub mod api;
mod policy;
pub mod provision;
pub mod redrive;
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

/// An AWS SDK error as one line: the service's code and message, or the
/// transport failure (connection refused, timeout) when there is no
/// response, so that a dead endpoint is named as such.
pub(crate) fn describe(e: &(impl std::error::Error + 'static)) -> String {
    aws_sdk_sqs::error::DisplayErrorContext(e).to_string()
}
