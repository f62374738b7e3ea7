//! The emulator shim: what EventBridge does on AWS and LocalStack cannot.
//!
//! On LocalStack a rule cannot deliver to an SNS FIFO topic (it publishes
//! without a message group and the event is lost, with only a line in
//! LocalStack's log). With [`Targets::EmulatorShim`](crate::provision::Targets)
//! each rule delivers to an SQS FIFO shim queue instead, keeping its static
//! group `S-pNN`, and [`Shim::forward_once`] publishes each message to the stage's
//! topic with that group and the event's `eventId` as deduplication id, then
//! deletes it. Messages of one group are forwarded in order; after a failed
//! publish the rest of that group waits for the next pass. Never use this
//! against AWS.

use std::future::Future;
use std::time::Duration;

use aws_sdk_sns::types::PublishBatchRequestEntry;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
use bems_core::Stage;
use bems_core::routing::CellSpec;

use crate::provision::{Clients, shim_queue_name};

/// A failed shim call.
#[derive(Debug, thiserror::Error)]
#[error("emulator shim: {0}")]
pub struct ShimError(String);

fn fail(what: &str, e: &(impl std::error::Error + 'static)) -> ShimError {
    ShimError(format!("{what}: {}", crate::describe(e)))
}

/// The forwarder of one cell: its shim queues' URLs, looked up once.
#[derive(Debug, Clone)]
pub struct Shim {
    clients: Clients,
    spec: CellSpec,
    queues: Vec<(Stage, String)>,
}

impl Shim {
    /// The forwarder for `spec`'s shim queues; fails if one is missing.
    pub async fn connect(clients: Clients, spec: CellSpec) -> Result<Shim, ShimError> {
        let mut queues = Vec::new();
        for stage in Stage::ALL {
            let name = shim_queue_name(&spec, stage);
            let url = clients
                .sqs
                .get_queue_url()
                .queue_name(&name)
                .send()
                .await
                .map_err(|e| fail(&format!("queue {name}"), &e))?
                .queue_url()
                .unwrap_or_default()
                .to_owned();
            queues.push((stage, url));
        }
        Ok(Shim { clients, spec, queues })
    }

    /// Moves what the shim queues hold now to the stage topics; returns how
    /// many messages it forwarded.
    pub async fn forward_once(&self) -> Result<usize, ShimError> {
        let mut moved = 0;
        for (stage, url) in &self.queues {
            loop {
                let (n, go_on) = self.forward_batch(*stage, url).await?;
                moved += n;
                if !go_on {
                    break;
                }
            }
        }
        Ok(moved)
    }

    /// Forwards one received batch with one `PublishBatch` and one
    /// `DeleteMessageBatch`. Returns how many it moved and whether to go on:
    /// not when the queue is empty or an entry failed (the rest of the queue
    /// waits for the next pass).
    ///
    /// SNS publishes a batch's entries of one group in order, but a batch is
    /// not atomic: if an entry fails, later entries of its group that
    /// succeeded are out before it. The failed one is retried on the next
    /// pass and the processors' transition checks hold the order; this is
    /// an emulator-only path where partial failures have not been seen.
    async fn forward_batch(&self, stage: Stage, url: &str) -> Result<(usize, bool), ShimError> {
        let batch = self
            .clients
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .send()
            .await
            .map_err(|e| fail(&format!("receive from {url}"), &e))?;
        let messages = batch.messages();
        if messages.is_empty() {
            return Ok((0, false));
        }
        let mut entries = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let group = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                .cloned()
                .unwrap_or_default();
            let body = m.body().unwrap_or_default();
            let dedup = serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["detail"]["eventId"].as_str().map(str::to_owned))
                .unwrap_or_else(|| m.message_id().unwrap_or_default().to_owned());
            entries.push(
                PublishBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message(body)
                    .message_group_id(group)
                    .message_deduplication_id(dedup)
                    .build()
                    .map_err(|e| fail("publish entry", &e))?,
            );
        }
        let published = self
            .clients
            .sns
            .publish_batch()
            .topic_arn(self.spec.topic_arn(stage))
            .set_publish_batch_request_entries(Some(entries))
            .send()
            .await
            .map_err(|e| fail(&format!("publish to {stage}"), &e))?;
        let mut deletes = Vec::new();
        for ok in published.successful() {
            let Some(m) = ok.id().and_then(|id| id.parse::<usize>().ok()).and_then(|i| messages.get(i)) else {
                continue;
            };
            deletes.push(
                DeleteMessageBatchRequestEntry::builder()
                    .id(ok.id().unwrap_or_default())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .build()
                    .map_err(|e| fail("delete entry", &e))?,
            );
        }
        let moved = deletes.len();
        if !deletes.is_empty() {
            self.clients
                .sqs
                .delete_message_batch()
                .queue_url(url)
                .set_entries(Some(deletes))
                .send()
                .await
                .map_err(|e| fail(&format!("delete from {url}"), &e))?;
        }
        Ok((moved, published.failed().is_empty()))
    }

    /// Forwards until `shutdown` resolves, pausing `idle` when there was
    /// nothing to move. Errors are retried on the next pass (the emulator
    /// may restart).
    pub async fn run(&self, idle: Duration, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let pause = match self.forward_once().await {
                Ok(0) | Err(_) => idle,
                Ok(_) => Duration::ZERO,
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}
