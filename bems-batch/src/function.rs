//! Batch functions: what one invocation calls.
//!
//! A [`BatchFunction`] is built once per instance (Lambda execution
//! environment, or local runner) and called for every batch, so what it
//! holds — clients, a handler's memory of the events it handled, caches —
//! lasts as long as the instance, as the Lambda runtime's own examples
//! keep their state outside the handler closure.

use std::future::Future;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use tokio::time::Instant;

use crate::{BatchProcessor, DeadLetterSink, RecordHandler};

/// What the caller knows of one invocation.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Invocation {
    /// The invocation's request id (Lambda's), or empty.
    pub request_id: String,
    /// When retries must stop so the response is back in time; `None` for
    /// no limit.
    pub deadline: Option<Instant>,
}

impl Invocation {
    /// An invocation with `request_id` and no deadline.
    pub fn new(request_id: impl Into<String>) -> Invocation {
        Invocation { request_id: request_id.into(), deadline: None }
    }

    /// Sets the deadline.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Instant) -> Invocation {
        self.deadline = Some(deadline);
        self
    }
}

/// A function over SQS batches: an `SqsEvent` in, the partial batch
/// response out.
pub trait BatchFunction {
    /// Handles one batch.
    fn call(&mut self, event: SqsEvent, invocation: &Invocation) -> impl Future<Output = SqsBatchResponse> + Send;
}

/// A batch function made of a [`BatchProcessor`] and a record handler.
#[derive(Debug, Clone)]
pub struct ProcessorFunction<S, H> {
    /// The processor (dead-letter sink, retries, max receive count).
    pub processor: BatchProcessor<S>,
    /// The record handler, kept across batches.
    pub handler: H,
}

impl<S, H> ProcessorFunction<S, H> {
    /// Pairs `processor` with `handler`.
    pub fn new(processor: BatchProcessor<S>, handler: H) -> ProcessorFunction<S, H> {
        ProcessorFunction { processor, handler }
    }
}

impl<S: DeadLetterSink + Sync + Send, H: RecordHandler + Send> BatchFunction for ProcessorFunction<S, H> {
    async fn call(&mut self, event: SqsEvent, invocation: &Invocation) -> SqsBatchResponse {
        // The invocation's deadline, else the processor's own.
        let deadline = invocation.deadline.or(self.processor.deadline);
        self.processor.process_by(&event, &mut self.handler, deadline).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IN_PLACE_RETRY, RecordError};
    use aws_lambda_events::sqs::SqsMessage;

    /// Always throttled; counts its attempts.
    #[derive(Default)]
    struct Throttled(u32);

    impl RecordHandler for Throttled {
        async fn handle(&mut self, _: &SqsMessage) -> Result<(), RecordError> {
            self.0 += 1;
            Err(RecordError::transient("ThrottlingException"))
        }
    }

    fn one_record() -> SqsEvent {
        let mut record = SqsMessage::default();
        record.message_id = Some("m1".into());
        let mut event = SqsEvent::default();
        event.records = vec![record];
        event
    }

    /// Each invocation's deadline applies to that invocation only: a spent
    /// one stops the retries, and does not stay behind for the next call.
    #[tokio::test(start_paused = true)]
    async fn the_invocation_s_deadline_applies_to_that_invocation_only() {
        let retry = bems_core::retry::RetryPolicy { max_attempts: 3, ..IN_PLACE_RETRY };
        let mut function = ProcessorFunction::new(BatchProcessor::new().with_retry(retry), Throttled::default());
        let spent = Invocation::new("r1").with_deadline(Instant::now());
        let response = function.call(one_record(), &spent).await;
        assert_eq!(response.batch_item_failures.len(), 1);
        assert_eq!(function.handler.0, 1, "no retry past the deadline");

        let response = function.call(one_record(), &Invocation::new("r2")).await;
        assert_eq!(response.batch_item_failures.len(), 1);
        assert_eq!(function.handler.0, 1 + 3, "the next invocation retries in full");
    }
}
