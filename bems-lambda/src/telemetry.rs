//! The stock functions' logs and metrics, opt-in.
//!
//! Nothing in this crate installs a logger or a metrics recorder by
//! itself: the batch core and the processors only emit `tracing` events
//! and `metrics` counts, which cost nothing without a subscriber or
//! recorder. The stock binaries call [`init_logs`] and [`Metrics::install`];
//! a function of your own may use these, or its own set-up.
//!
//! Metrics are CloudWatch Embedded Metric Format documents in namespace
//! [`METRICS_NAMESPACE`] with dimensions `Cell` and `Function`: `Processed`,
//! `Failed` and `DeadLettered` by error class, `Retried`, `StageLatency`,
//! `VisibilityLatency`, `RecordsWritten`, `ColdStart`. One document is
//! written to stdout after each invocation, where Lambda's log stream turns
//! it into metrics.

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use bems_batch::function::{BatchFunction, Invocation};
use bems_core::contract::{CELL_DIMENSION, FUNCTION_DIMENSION, Function, METRICS_NAMESPACE};
use bems_core::fields::CellId;

/// JSON log lines on stdout (CloudWatch Logs adds the time), the level
/// from `RUST_LOG` (default `info`). Does nothing if a subscriber is set.
pub fn init_logs() {
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

/// Why the metrics recorder could not be installed (one is already).
#[derive(Debug, thiserror::Error)]
#[error("metrics recorder")]
pub struct TelemetryError(#[source] Box<dyn std::error::Error + Send + Sync>);

/// The process's EMF metrics recorder.
#[derive(Clone, Copy)]
pub struct Metrics(&'static metrics_cloudwatch_embedded::Collector);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics(EMF)")
    }
}

impl Metrics {
    /// Installs the recorder for `function` of `cell` and counts a cold
    /// start.
    pub fn install(cell: &CellId, function: Function) -> Result<Metrics, TelemetryError> {
        let collector = metrics_cloudwatch_embedded::Builder::new()
            .cloudwatch_namespace(METRICS_NAMESPACE)
            .with_dimension(CELL_DIMENSION, cell.to_string())
            .with_dimension(FUNCTION_DIMENSION, function.metrics_name())
            .init()
            .map_err(TelemetryError)?;
        metrics::counter!("ColdStart").increment(1);
        Ok(Metrics(collector))
    }

    /// Writes the invocation's document.
    pub fn flush(&self, request_id: &str) {
        self.0.set_property("RequestId", request_id.to_owned());
        if let Err(e) = self.0.flush(std::io::stdout()) {
            tracing::warn!(error = %e, "could not write the metrics document");
        }
    }
}

/// A batch function whose metrics are flushed after each invocation.
#[derive(Debug, Clone)]
pub struct Observed<F> {
    function: F,
    metrics: Option<Metrics>,
}

impl<F> Observed<F> {
    /// `function`, flushing `metrics` (if any) after each call.
    pub fn new(function: F, metrics: Option<Metrics>) -> Observed<F> {
        Observed { function, metrics }
    }
}

impl<F: BatchFunction + Send> BatchFunction for Observed<F> {
    async fn call(&mut self, event: SqsEvent, invocation: &Invocation) -> SqsBatchResponse {
        let response = self.function.call(event, invocation).await;
        if let Some(metrics) = &self.metrics {
            metrics.flush(&invocation.request_id);
        }
        response
    }
}
