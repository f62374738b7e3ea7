//! The Lambda entry points: configuration from the environment, clients
//! from the standard AWS chain, and the Lambda runtime loop. The binaries in
//! `src/bin/` are one line each.
//!
//! | variable | meaning |
//! |---|---|
//! | `BEMS_CELL_ID` | the cell |
//! | `BEMS_PARTITIONS` | its partition count (1–99) |
//! | `BEMS_DLQ_URL` | the dead-letter queue of the function's source queue |
//! | `BEMS_MAX_RECEIVE_COUNT` | the source queue's `maxReceiveCount` (default 5) |
//! | `BEMS_IDEMPOTENCY_TABLE` | stage processors, optional: the DynamoDB table of [`crate::idempotency::DynamoDbStore`] |
//! | `BEMS_IDEMPOTENCY_TTL_DAYS` | how long its items live (default 35) |
//! | `BEMS_TIMESTREAM_DATABASE`, `BEMS_TIMESTREAM_TABLE` | writer only |
//! | `BEMS_ACCOUNT_ID` | route forwarder: the cell's account (outside Lambda, default `000000000000`, LocalStack's) |
//! | `RUST_LOG` | log level (default `info`) |
//!
//! Logs are JSON lines with the invoice id, event id and correlation id of
//! the record at hand; metrics are CloudWatch Embedded Metric Format
//! documents (namespace `BEMS`): `Processed`, `Failed` and `DeadLettered` by
//! error class, `Retried`, `StageLatency`, `VisibilityLatency`,
//! `RecordsWritten`, `ColdStart`.
//!
//! Region and account come from the function itself (`AWS_REGION`, and the
//! invoked function's ARN).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use bems_core::contract::{CELL_DIMENSION, FUNCTION_DIMENSION, Function, METRICS_NAMESPACE};
use bems_core::fields::InvoiceId;
use bems_core::publish::{CellTarget, Publisher, RetryPolicy};
use bems_core::{InvoiceEvent, Stage};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use rust_decimal::Decimal;

use bems_core::fields::{AccountId, CellId, Region};
use bems_core::partition::PartitionCount;
use bems_core::routing::CellSpec;

use crate::batch::BatchProcessor;
use crate::forward::Forwarder;
use crate::idempotency::DynamoDbStore;
use crate::processor::StageProcessor;
use crate::sqs::{BatchFunction, ProcessorFunction, SqsDeadLetter};
use crate::stages::{Approvals, PurchaseOrders, Rules};
use crate::timestream::{TimestreamTable, TimestreamWriter};

/// Why a function could not start.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

fn var(name: &str) -> Result<String, ConfigError> {
    std::env::var(name).map_err(|_| ConfigError(format!("{name} is not set")))
}

/// The reference deployment has no purchase-order system: every invoice
/// is matched against its own amount. Replace it with a lookup into your
/// ERP; the rules stay the same.
#[derive(Debug, Clone, Copy)]
pub struct NoPurchaseOrderSystem;

impl PurchaseOrders for NoPurchaseOrderSystem {
    fn expected_amount(&self, invoice: &InvoiceEvent) -> Option<Decimal> {
        Some(invoice.amount.value())
    }
}

/// The reference deployment has no approval workflow: invoices above the
/// automatic limit wait, and end in the DLQ with the reason once
/// `maxReceiveCount` runs out.
#[derive(Debug, Clone, Copy)]
pub struct NoApprovals;

impl Approvals for NoApprovals {
    fn approved(&self, _: &InvoiceId) -> bool {
        false
    }
}

/// One invocation's future, boxed so the runtime's service stack stays
/// within the compiler's layout depth limit in every binary.
type Invocation = std::pin::Pin<Box<dyn std::future::Future<Output = Result<SqsBatchResponse, Error>> + Send>>;

/// How long before the invocation's deadline processing stops retrying.
const DEADLINE_MARGIN: Duration = Duration::from_secs(2);

fn deadline(context: &lambda_runtime::Context) -> tokio::time::Instant {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let left = u128::from(context.deadline).saturating_sub(now_ms);
    let left = Duration::from_millis(u64::try_from(left).unwrap_or(u64::MAX)).saturating_sub(DEADLINE_MARGIN);
    tokio::time::Instant::now() + left
}

fn account_of(arn: &str) -> Option<&str> {
    arn.split(':').nth(4)
}

/// JSON logs to stdout (CloudWatch Logs adds the time), level from
/// `RUST_LOG` (default `info`).
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .without_time()
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
}

/// CloudWatch Embedded Metric Format: namespace [`METRICS_NAMESPACE`],
/// dimensions `Cell` and `Function`; one document per invocation, written to stdout, where
/// Lambda's log stream turns it into metrics. A `ColdStart` count goes with
/// the first.
fn init_metrics(cell: &str, function: &str) -> Result<&'static metrics_cloudwatch_embedded::Collector, ConfigError> {
    let collector = metrics_cloudwatch_embedded::Builder::new()
        .cloudwatch_namespace(METRICS_NAMESPACE)
        .with_dimension(CELL_DIMENSION, cell.to_owned())
        .with_dimension(FUNCTION_DIMENSION, function.to_owned())
        .init()
        .map_err(|e| ConfigError(format!("metrics: {e}")))?;
    metrics::counter!("ColdStart").increment(1);
    Ok(collector)
}

/// Writes the invocation's metrics document.
fn flush(metrics: &metrics_cloudwatch_embedded::Collector, request_id: &str) {
    metrics.set_property("RequestId", request_id.to_owned());
    if let Err(e) = metrics.flush(std::io::stdout()) {
        tracing::warn!(error = %e, "could not write the metrics document");
    }
}

/// Runs the processor of `stage` as a Lambda function.
pub async fn run_stage(stage: Stage) -> Result<(), Error> {
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let cell = var("BEMS_CELL_ID")?;
    let partitions = partition_count(&var("BEMS_PARTITIONS")?)?;
    let dlq = var("BEMS_DLQ_URL")?;
    let max_receive_count: u32 = std::env::var("BEMS_MAX_RECEIVE_COUNT").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let region = config.region().map(ToString::to_string).ok_or_else(|| ConfigError("no AWS Region".into()))?;
    let events = aws_sdk_eventbridge::Client::new(&config);
    let sqs = aws_sdk_sqs::Client::new(&config);
    // Optional durable idempotency (see `crate::idempotency` for its cost).
    let store = match std::env::var("BEMS_IDEMPOTENCY_TABLE") {
        Ok(table) if !table.is_empty() => {
            let days: u64 = match std::env::var("BEMS_IDEMPOTENCY_TTL_DAYS") {
                Ok(v) => {
                    v.parse().map_err(|_| ConfigError("BEMS_IDEMPOTENCY_TTL_DAYS must be a whole number".into()))?
                }
                Err(_) => 35,
            };
            let ttl = Duration::from_secs(days * 86_400);
            Some(DynamoDbStore::new(aws_sdk_dynamodb::Client::new(&config), table, ttl))
        }
        _ => None,
    };
    init_logs();
    let metrics = init_metrics(&cell, &Function::Processor(stage).metrics_name())?;

    let handler = service_fn(move |event: LambdaEvent<SqsEvent>| {
        let (cell, region, dlq, events, sqs, store) =
            (cell.clone(), region.clone(), dlq.clone(), events.clone(), sqs.clone(), store.clone());
        // Boxed: erases the handler's deep future type (see `run`).
        Box::pin(async move {
            let account = account_of(&event.context.invoked_function_arn).unwrap_or("000000000000").to_owned();
            let target = CellTarget::new(&cell, &region, &account, u32::from(partitions.get()))?;
            let publisher = Publisher::new(events, target)
                .with_retry(RetryPolicy { deadline: Duration::from_secs(10), ..RetryPolicy::default() });
            let mut function = ProcessorFunction {
                processor: BatchProcessor::new()
                    .with_dead_letter(SqsDeadLetter::new(sqs, dlq))
                    .with_max_receive_count(max_receive_count)
                    .with_deadline(deadline(&event.context)),
                handler: StageProcessor::new(stage, Rules::default(), publisher, NoPurchaseOrderSystem, NoApprovals)
                    .with_store(store),
            };
            let response = function.call(event.payload).await;
            flush(metrics, &event.context.request_id);
            Ok::<SqsBatchResponse, Error>(response)
        }) as Invocation
    });
    // Boxed: the runtime's service stack makes a future too deep for the
    // compiler's default layout limit in every binary that awaits it.
    Box::pin(lambda_runtime::run(handler)).await
}

/// A Timestream write client. Timestream requires endpoint discovery (the
/// SDK's client does not work without it); an emulator, configured with
/// `AWS_ENDPOINT_URL`, answers at its own address instead. The discovered
/// endpoints are refreshed in the background.
async fn timestream_client(config: &aws_config::SdkConfig) -> Result<aws_sdk_timestreamwrite::Client, ConfigError> {
    let client = aws_sdk_timestreamwrite::Client::new(config);
    if config.endpoint_url().is_some() {
        return Ok(client);
    }
    let (client, reloader) = client
        .with_endpoint_discovery_enabled()
        .await
        .map_err(|e| ConfigError(format!("Timestream endpoint discovery: {e}")))?;
    tokio::spawn(reloader.reload_task());
    Ok(client)
}

/// Runs the Timestream writer as a Lambda function.
pub async fn run_timestream_writer() -> Result<(), Error> {
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let table = TimestreamTable {
        client: timestream_client(&config).await?,
        database: var("BEMS_TIMESTREAM_DATABASE")?,
        table: var("BEMS_TIMESTREAM_TABLE")?,
    };
    let dead_letter = SqsDeadLetter::new(aws_sdk_sqs::Client::new(&config), var("BEMS_DLQ_URL")?);
    let partitions = partition_count(&var("BEMS_PARTITIONS")?)?;
    init_logs();
    let metrics = init_metrics(&var("BEMS_CELL_ID")?, &Function::StatusWriter.metrics_name())?;
    let handler = service_fn(move |event: LambdaEvent<SqsEvent>| {
        let mut writer = TimestreamWriter::new(table.clone(), dead_letter.clone()).in_cell(partitions);
        Box::pin(async move {
            let response = writer.call(event.payload).await;
            flush(metrics, &event.context.request_id);
            Ok::<SqsBatchResponse, Error>(response)
        }) as Invocation
    });
    // Boxed: the runtime's service stack makes a future too deep for the
    // compiler's default layout limit in every binary that awaits it.
    Box::pin(lambda_runtime::run(handler)).await
}

/// Runs the route forwarder ([`crate::forward`]): as a Lambda function, or,
/// outside Lambda (no `AWS_LAMBDA_RUNTIME_API`), against the cell's four
/// route queues with the local event-source runner until Ctrl-C, which is
/// how a cell on the emulators gets its events from the rules to the
/// topics.
pub async fn run_forwarder() -> Result<(), Error> {
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let in_lambda = std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some();
    let cell = var("BEMS_CELL_ID")?;
    let partitions = var("BEMS_PARTITIONS")?;
    let account = match var("BEMS_ACCOUNT_ID") {
        Ok(a) => a,
        Err(_) if !in_lambda => "000000000000".to_owned(),
        Err(e) => return Err(e.into()),
    };
    let region = config.region().map(ToString::to_string).ok_or_else(|| ConfigError("no AWS Region".into()))?;
    let spec = cell_spec(&cell, &region, &account, &partitions)?;
    let topics = aws_sdk_sns::Client::new(&config);
    init_logs();
    if !in_lambda {
        tracing::info!(cell = %spec.cell_id(), "forwarding the route queues to the stage topics; Ctrl-C stops");
        let sqs = aws_sdk_sqs::Client::new(&config);
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        crate::forward::run_locally(&spec, topics, sqs, Duration::from_millis(100), ctrl_c).await?;
        return Ok(());
    }
    let metrics = init_metrics(&cell, &Function::RouteForwarder.metrics_name())?;
    let handler = service_fn(move |event: LambdaEvent<SqsEvent>| {
        let mut function = ProcessorFunction {
            processor: BatchProcessor::new().with_deadline(deadline(&event.context)),
            handler: Forwarder::new(&spec, topics.clone()),
        };
        Box::pin(async move {
            let response = function.call(event.payload).await;
            flush(metrics, &event.context.request_id);
            Ok::<SqsBatchResponse, Error>(response)
        }) as Invocation
    });
    // Boxed: the runtime's service stack makes a future too deep for the
    // compiler's default layout limit in every binary that awaits it.
    Box::pin(lambda_runtime::run(handler)).await
}

/// `BEMS_PARTITIONS`, read.
fn partition_count(text: &str) -> Result<PartitionCount, ConfigError> {
    let partitions: u32 = text.parse().map_err(|_| ConfigError("BEMS_PARTITIONS must be 1-99".into()))?;
    PartitionCount::new(partitions).map_err(|e| ConfigError(format!("BEMS_PARTITIONS: {e}")))
}

/// The cell of a function, from its configuration.
fn cell_spec(cell: &str, region: &str, account: &str, partitions: &str) -> Result<CellSpec, ConfigError> {
    let bad = |name: &str, e: &dyn std::fmt::Display| ConfigError(format!("{name}: {e}"));
    CellSpec::new(
        CellId::new(cell).map_err(|e| bad("BEMS_CELL_ID", &e))?,
        Region::new(region).map_err(|e| bad("AWS_REGION", &e))?,
        AccountId::new(account).map_err(|e| bad("BEMS_ACCOUNT_ID", &e))?,
        partition_count(partitions)?,
    )
    .map_err(|e| bad("cell", &e))
}
