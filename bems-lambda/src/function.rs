//! The Lambda entry points, and the extension point of the stage
//! processors.
//!
//! Each function is built once per instance, before its first invocation:
//! configuration from the environment ([`crate::config`]), clients from
//! the standard AWS chain, the handler with its memory of handled events.
//! Each invocation then borrows it ([`bems_batch::lambda`]). The stock
//! binaries in `src/bin/` are one call each.
//!
//! ## Your own purchase orders, approvals and rules
//!
//! [`StageFunction`] is the stock processor of one stage with its
//! collaborators replaceable: [`PurchaseOrders`] (what the reconciliation
//! stage matches an invoice against), [`Approvals`] (what the
//! authorization stage asks about invoices above the automatic limit) and
//! [`Rules`] (ages, tolerances, limits). A function of your own is then a
//! `main` of a few lines, with nothing copied from ours:
//!
//! ```no_run
//! use bems_core::{InvoiceEvent, Stage};
//! use bems_lambda::config::StageConfig;
//! use bems_lambda::function::StageFunction;
//! use bems_lambda::stages::PurchaseOrders;
//! use rust_decimal::Decimal;
//!
//! /// Our ERP's purchase orders, by the invoice's purchase-order number.
//! struct Erp;
//!
//! impl PurchaseOrders for Erp {
//!     fn expected_amount(&self, invoice: &InvoiceEvent) -> Option<Decimal> {
//!         // A lookup into the ERP goes here.
//!         Some(invoice.amount.value())
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), lambda_runtime::Error> {
//!     let config = StageConfig::from_env(Stage::Reconciliation)?;
//!     StageFunction::new(config).with_purchase_orders(Erp).run().await
//! }
//! ```
//!
//! Logs and metrics are the caller's choice ([`crate::telemetry`]): the
//! stock binaries install ours, [`StageFunction::run`] alone installs
//! nothing.

#[cfg(feature = "processors")]
pub use stage::*;

#[cfg(feature = "processors")]
mod stage {
    use std::time::Duration;

    use bems_batch::function::{BatchFunction, ProcessorFunction};
    use bems_batch::{BatchProcessor, DeadLetterSink};
    use bems_core::Stage;
    use bems_core::contract::Function;
    use bems_core::publish::{CellTarget, EventBus, Publisher};
    use bems_core::retry::RetryPolicy;
    use lambda_runtime::Error;

    use crate::config::StageConfig;
    use crate::idempotency::{DynamoDbStore, IdempotencyStore};
    use crate::processor::StageProcessor;
    use crate::sqs::SqsDeadLetter;
    pub use crate::stages::{Approvals, NoApprovals, NoPurchaseOrderSystem, PurchaseOrders, Rules};
    use crate::telemetry::{Metrics, Observed};

    /// How long the publisher retries a batch's next events before the
    /// records fail back to their queue.
    const PUBLISH_DEADLINE: Duration = Duration::from_secs(10);

    /// One stage's processor as a function, collaborators replaceable.
    #[derive(Debug, Clone)]
    pub struct StageFunction<O = NoPurchaseOrderSystem, A = NoApprovals> {
        config: StageConfig,
        rules: Rules,
        orders: O,
        approvals: A,
        metrics: Option<Metrics>,
    }

    impl StageFunction {
        /// The stock processor of `config.stage`.
        pub fn new(config: StageConfig) -> StageFunction {
            StageFunction {
                config,
                rules: Rules::default(),
                orders: NoPurchaseOrderSystem,
                approvals: NoApprovals,
                metrics: None,
            }
        }
    }

    impl<O, A> StageFunction<O, A>
    where
        O: PurchaseOrders + Send + Sync + 'static,
        A: Approvals + Send + Sync + 'static,
    {
        /// Matches invoices against `orders` (the reconciliation stage).
        pub fn with_purchase_orders<T: PurchaseOrders>(self, orders: T) -> StageFunction<T, A> {
            StageFunction {
                config: self.config,
                rules: self.rules,
                orders,
                approvals: self.approvals,
                metrics: self.metrics,
            }
        }

        /// Asks `approvals` about invoices above the automatic limit (the
        /// authorization stage).
        pub fn with_approvals<T: Approvals>(self, approvals: T) -> StageFunction<O, T> {
            StageFunction {
                config: self.config,
                rules: self.rules,
                orders: self.orders,
                approvals,
                metrics: self.metrics,
            }
        }

        /// Replaces the stages' rules.
        #[must_use]
        pub fn with_rules(mut self, rules: Rules) -> StageFunction<O, A> {
            self.rules = rules;
            self
        }

        /// Flushes `metrics` after each invocation.
        #[must_use]
        pub fn with_metrics(mut self, metrics: Metrics) -> StageFunction<O, A> {
            self.metrics = Some(metrics);
            self
        }

        /// The batch function over `bus`, `dead_letter` and `store`: what
        /// [`run`](StageFunction::run) runs with the AWS clients, and what a
        /// test runs with fakes.
        pub fn build<B, D, S>(self, bus: B, dead_letter: D, store: S) -> impl BatchFunction + Send + 'static
        where
            B: EventBus + Send + Sync + 'static,
            D: DeadLetterSink + Send + Sync + 'static,
            S: IdempotencyStore + Send + Sync + 'static,
        {
            let target = CellTarget::from(&self.config.cell);
            let publisher = Publisher::new(bus, target)
                .with_retry(RetryPolicy { deadline: PUBLISH_DEADLINE, ..RetryPolicy::default() });
            let processor = BatchProcessor::new()
                .with_dead_letter(dead_letter)
                .with_max_receive_count(self.config.max_receive_count);
            let handler = StageProcessor::new(self.config.stage, self.rules, publisher, self.orders, self.approvals)
                .with_store(store);
            Observed::new(ProcessorFunction::new(processor, handler), self.metrics)
        }

        /// Runs on the Lambda runtime with clients from the standard AWS
        /// chain: EventBridge, SQS (the DLQ) and, when configured, DynamoDB.
        pub async fn run(self) -> Result<(), Error> {
            let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
            let dead_letter = SqsDeadLetter::new(aws_sdk_sqs::Client::new(&sdk), self.config.dlq_url.clone());
            let store = self
                .config
                .idempotency
                .as_ref()
                .map(|i| DynamoDbStore::new(aws_sdk_dynamodb::Client::new(&sdk), i.table.clone(), i.ttl));
            let function = self.build(aws_sdk_eventbridge::Client::new(&sdk), dead_letter, store);
            bems_batch::lambda::run(function).await
        }
    }

    /// Runs the stock processor of `stage`, with our logs and metrics.
    pub async fn run_stage(stage: Stage) -> Result<(), Error> {
        let config = StageConfig::from_env(stage)?;
        crate::telemetry::init_logs();
        let metrics = Metrics::install(config.cell.cell_id(), Function::Processor(stage))?;
        StageFunction::new(config).with_metrics(metrics).run().await
    }
}

/// Runs the route forwarder ([`crate::forward`]) with our logs and
/// metrics: as a Lambda function, or, outside Lambda (no
/// `AWS_LAMBDA_RUNTIME_API`), against the cell's four route queues with the
/// local event-source runner until Ctrl-C, which is how a cell on the
/// emulators gets its events from the rules to the topics.
#[cfg(feature = "forwarder")]
pub async fn run_forwarder() -> Result<(), lambda_runtime::Error> {
    use bems_batch::BatchProcessor;
    use bems_batch::function::ProcessorFunction;

    let in_lambda = std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some();
    let config = crate::config::ForwarderConfig::from_env(in_lambda)?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let topics = aws_sdk_sns::Client::new(&sdk);
    crate::telemetry::init_logs();
    let spec = config.cell;
    if !in_lambda {
        tracing::info!(cell = %spec.cell_id(), "forwarding the route queues to the stage topics; Ctrl-C stops");
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        let idle = std::time::Duration::from_millis(100);
        crate::forward::run_locally(&spec, topics, aws_sdk_sqs::Client::new(&sdk), idle, ctrl_c).await?;
        return Ok(());
    }
    let metrics = crate::telemetry::Metrics::install(spec.cell_id(), bems_core::contract::Function::RouteForwarder)?;
    let function = ProcessorFunction::new(BatchProcessor::new(), crate::forward::Forwarder::new(&spec, topics));
    bems_batch::lambda::run(crate::telemetry::Observed::new(function, Some(metrics))).await
}

/// Runs the Timestream writer with our logs and metrics.
#[cfg(feature = "timestream")]
pub async fn run_timestream_writer() -> Result<(), lambda_runtime::Error> {
    let config = crate::config::TimestreamConfig::from_env()?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let table = crate::timestream::TimestreamTable {
        client: timestream_client(&sdk).await?,
        database: config.database,
        table: config.table,
    };
    let dead_letter = crate::sqs::SqsDeadLetter::new(aws_sdk_sqs::Client::new(&sdk), config.writer.dlq_url);
    crate::telemetry::init_logs();
    let metrics =
        crate::telemetry::Metrics::install(&config.writer.cell_id, bems_core::contract::Function::StatusWriter)?;
    let writer = crate::writer::StatusWriter::new(table, dead_letter)
        .in_cell(config.writer.partitions)
        .with_max_receive_count(config.writer.max_receive_count);
    bems_batch::lambda::run(crate::telemetry::Observed::new(writer, Some(metrics))).await
}

/// Runs the PostgreSQL writer with our logs and metrics: the configuration
/// read and the connection opened once, before the first invocation (a
/// store that does not answer yet is only logged: the first batch
/// connects again, and fails back to its queue if it still cannot).
#[cfg(feature = "postgres")]
pub async fn run_postgres_writer() -> Result<(), lambda_runtime::Error> {
    let config = crate::config::PostgresConfig::from_env()?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    crate::telemetry::init_logs();
    let postgres = match config.auth {
        crate::config::PostgresAuth::Password => config.postgres,
        crate::config::PostgresAuth::Iam => {
            let (Some(credentials), Some(region)) = (sdk.credentials_provider(), sdk.region()) else {
                return Err("BEMS_POSTGRES_AUTH=iam needs AWS credentials and a Region (AWS_REGION)".into());
            };
            let tokens = bems_store::postgres::iam::RdsIamAuth::new(credentials, region.as_ref());
            config.postgres.with_password_source(std::sync::Arc::new(tokens))?
        }
    };
    let store = bems_store::postgres::write::Writer::new(postgres);
    if let Err(e) = store.connect().await {
        tracing::warn!(error = %e, "the store does not answer yet; the first batch will connect");
    }
    let dead_letter = crate::sqs::SqsDeadLetter::new(aws_sdk_sqs::Client::new(&sdk), config.writer.dlq_url);
    let metrics =
        crate::telemetry::Metrics::install(&config.writer.cell_id, bems_core::contract::Function::StatusWriter)?;
    let writer = crate::writer::StatusWriter::new(crate::postgres::PostgresSink::new(store), dead_letter)
        .in_cell(config.writer.partitions)
        .with_max_receive_count(config.writer.max_receive_count);
    bems_batch::lambda::run(crate::telemetry::Observed::new(writer, Some(metrics))).await
}

/// A Timestream write client. Timestream requires endpoint discovery (the
/// SDK's client does not work without it); an emulator, configured with
/// `AWS_ENDPOINT_URL`, answers at its own address instead. The discovered
/// endpoints are refreshed in the background.
#[cfg(feature = "timestream")]
async fn timestream_client(
    sdk: &aws_config::SdkConfig,
) -> Result<aws_sdk_timestreamwrite::Client, lambda_runtime::Error> {
    let client = aws_sdk_timestreamwrite::Client::new(sdk);
    if sdk.endpoint_url().is_some() {
        return Ok(client);
    }
    let (client, reloader) = client.with_endpoint_discovery_enabled().await?;
    tokio::spawn(reloader.reload_task());
    Ok(client)
}
