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
        if let Some(deadline) = invocation.deadline {
            self.processor.deadline = Some(deadline);
        }
        self.processor.process(&event, &mut self.handler).await
    }
}
