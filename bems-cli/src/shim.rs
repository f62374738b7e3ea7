//! The emulator shim: what EventBridge does on AWS and LocalStack cannot.
//!
//! On LocalStack a rule cannot deliver to an SNS FIFO topic (it publishes
//! without a message group and the event is lost, with only a line in
//! LocalStack's log). With [`Targets::EmulatorShim`](crate::provision::Targets)
//! each rule delivers to an SQS FIFO shim queue instead, keeping its static
//! group `S-pNN`, and [`forward_once`] publishes each message to the stage's
//! topic with that group and the event's `eventId` as deduplication id, then
//! deletes it. Messages of one group are forwarded in order; after a failed
//! publish the rest of that group waits for the next pass. Never use this
//! against AWS.

use std::future::Future;
use std::time::Duration;

use aws_sdk_sqs::types::MessageSystemAttributeName;
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

/// Moves what the shim queues hold now to the stage topics; returns how many
/// messages it forwarded.
pub async fn forward_once(clients: &Clients, spec: &CellSpec) -> Result<usize, ShimError> {
    let mut moved = 0;
    for stage in Stage::ALL {
        let name = shim_queue_name(spec, stage);
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
        loop {
            let batch = clients
                .sqs
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(10)
                .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
                .send()
                .await
                .map_err(|e| fail(&format!("receive from {name}"), &e))?;
            let messages = batch.messages();
            if messages.is_empty() {
                break;
            }
            let mut failed_groups: Vec<String> = Vec::new();
            for m in messages {
                let group = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                    .cloned()
                    .unwrap_or_default();
                if failed_groups.contains(&group) {
                    continue;
                }
                let body = m.body().unwrap_or_default();
                let dedup = serde_json::from_str::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v["detail"]["eventId"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| m.message_id().unwrap_or_default().to_owned());
                let published = clients
                    .sns
                    .publish()
                    .topic_arn(spec.topic_arn(stage))
                    .message(body)
                    .message_group_id(&group)
                    .message_deduplication_id(dedup)
                    .send()
                    .await;
                if published.is_err() {
                    failed_groups.push(group);
                    continue;
                }
                clients
                    .sqs
                    .delete_message()
                    .queue_url(&url)
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .send()
                    .await
                    .map_err(|e| fail(&format!("delete from {name}"), &e))?;
                moved += 1;
            }
            if !failed_groups.is_empty() {
                break;
            }
        }
    }
    Ok(moved)
}

/// Forwards until `shutdown` resolves, pausing `idle` when there was nothing
/// to move. Errors are retried on the next pass (the emulator may restart).
pub async fn run(clients: Clients, spec: CellSpec, idle: Duration, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let pause = match forward_once(&clients, &spec).await {
            Ok(0) | Err(_) => idle,
            Ok(_) => Duration::ZERO,
        };
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}
