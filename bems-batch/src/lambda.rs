//! A batch function on the Lambda runtime.
//!
//! [`service`] turns a [`BatchFunction`] into the `tower` service
//! `lambda_runtime` calls; the function is built once, before the first
//! invocation, and each invocation borrows it in turn (the runtime runs
//! one invocation at a time per instance). [`run`] runs it.
//!
//! ```no_run
//! use bems_batch::function::ProcessorFunction;
//! use bems_batch::{BatchProcessor, RecordError, RecordHandler};
//! use aws_lambda_events::sqs::SqsMessage;
//!
//! struct Accept;
//!
//! impl RecordHandler for Accept {
//!     async fn handle(&mut self, _: &SqsMessage) -> Result<(), RecordError> {
//!         Ok(())
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), lambda_runtime::Error> {
//!     bems_batch::lambda::run(ProcessorFunction::new(BatchProcessor::new(), Accept)).await
//! }
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Context, Error, LambdaEvent, Service};
use tokio::sync::Mutex;

use crate::function::{BatchFunction, Invocation};

/// How long before the invocation's deadline retries stop, so that the
/// response still gets back to the runtime.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(2);

/// The invocation of `context`: its request id, and its deadline less
/// [`DEADLINE_MARGIN`].
pub fn invocation(context: &Context) -> Invocation {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let left = u128::from(context.deadline).saturating_sub(now_ms);
    let left = Duration::from_millis(u64::try_from(left).unwrap_or(u64::MAX)).saturating_sub(DEADLINE_MARGIN);
    Invocation::new(context.request_id.clone()).with_deadline(tokio::time::Instant::now() + left)
}

/// One invocation's future, boxed: the runtime's service stack around a
/// batch function's deep future type otherwise exceeds the compiler's
/// layout depth limit in the binaries that run it.
pub type InvocationFuture = std::pin::Pin<Box<dyn Future<Output = Result<SqsBatchResponse, Error>> + Send>>;

/// The Lambda service of `function`: built once, called per invocation.
pub fn service<F>(
    function: F,
) -> impl Service<LambdaEvent<SqsEvent>, Response = SqsBatchResponse, Error = Error, Future = InvocationFuture> + Clone
where
    F: BatchFunction + Send + 'static,
{
    let function = Arc::new(Mutex::new(function));
    lambda_runtime::service_fn(move |event: LambdaEvent<SqsEvent>| {
        let function = Arc::clone(&function);
        Box::pin(async move {
            let invocation = invocation(&event.context);
            let mut function = function.lock().await;
            Ok(function.call(event.payload, &invocation).await)
        }) as InvocationFuture
    })
}

/// Runs `function` on the Lambda runtime until the runtime stops.
pub async fn run<F>(function: F) -> Result<(), Error>
where
    F: BatchFunction + Send + 'static,
{
    // Boxed for the same reason as `InvocationFuture`.
    Box::pin(lambda_runtime::run(service(function))).await
}
