//! The batch core on a real FIFO queue, through the local event-source
//! runner: poison is dead-lettered with its reason and does not block its
//! group; a record that keeps failing is dead-lettered on its last attempt
//! (not by SQS's redrive, which would take the records held back behind it
//! along: they are received, and counted, with it); every other record is
//! handled once, in order.

use std::sync::{Arc, Mutex};

use aws_lambda_events::sqs::SqsMessage;
use aws_sdk_sqs::types::MessageSystemAttributeName;
use bems_batch::function::ProcessorFunction;
use bems_batch::{BatchProcessor, RecordError, RecordHandler, decode};
use bems_core::partition::{Partition, message_group_id};
use bems_core::{Stage, Status, Validator};
use bems_e2e::{Cell, environment, event};
use bems_lambda::sqs::{EventSource, REASON_ATTRIBUTE, RunnerOptions, SqsDeadLetter};
use bems_ops::provision::ProvisionOptions;

/// Records (invoice, seq) of what it handled; fails invoices named
/// `INV-BUSINESS-*` with a business error, every time.
#[derive(Clone)]
struct Recorder {
    seen: Arc<Mutex<Vec<(String, String)>>>,
    validator: Validator,
}

impl RecordHandler for Recorder {
    async fn handle(&mut self, record: &SqsMessage) -> Result<(), RecordError> {
        let d = decode(record, &self.validator)?;
        if d.event.invoice_id.as_str().starts_with("INV-BUSINESS") {
            return Err(RecordError::business("the ledger refuses this invoice"));
        }
        self.seen
            .lock()
            .expect("lock")
            .push((d.event.invoice_id.to_string(), d.event.metadata.correlation_id.to_string()));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_and_failing_records_leave_their_groups_and_nothing_is_lost() {
    let Some(env) = environment().await else { return };
    let options = ProvisionOptions { max_receive_count: 2, visibility_timeout_secs: 1 };
    let cell = Cell::create(&env, 2, options).await;
    let queue = cell.queue_url(&cell.spec.queue_name(Stage::Ingestion)).await;
    let dlq = cell.queue_url(&cell.spec.dlq_name(Stage::Ingestion)).await;

    // Invoice A: three events, with a poison message sent into A's group
    // between the first and the second. Invoice B: one event that the
    // handler always refuses, then nothing. Invoice C: two events. They go
    // straight onto the stage queue, in this order, with the groups the
    // routing gives them: this test is about the batch core on a FIFO queue,
    // not about how the emulators order deliveries on the way there.
    let publisher = cell.publisher();
    let send = |body: String, group: String, dedup: String| {
        let (sqs, queue) = (cell.clients.sqs.clone(), queue.clone());
        async move {
            sqs.send_message()
                .queue_url(&queue)
                .message_body(body)
                .message_group_id(group)
                .message_deduplication_id(dedup)
                .send()
                .await
                .expect("send to the stage queue");
        }
    };
    let events =
        [("INV-A", 0), ("poison", 0), ("INV-A", 1), ("INV-A", 2), ("INV-BUSINESS-1", 0), ("INV-C", 0), ("INV-C", 1)];
    let mut group_a = String::new();
    for (invoice, seq) in events {
        if invoice == "poison" {
            send("{this is not an invoice".into(), group_a.clone(), "poison-1".into()).await;
            continue;
        }
        let mut e = event(invoice, Stage::Ingestion, Status::Submitted, None, seq);
        publisher.place(&mut e);
        let group = message_group_id(Stage::Ingestion, Partition::for_invoice(&e.invoice_id, cell.spec.partitions()));
        if invoice == "INV-A" {
            group_a.clone_from(&group);
        }
        send(e.to_json(), group, e.event_id.to_string()).await;
    }

    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut function = ProcessorFunction {
        processor: BatchProcessor::new()
            .with_dead_letter(SqsDeadLetter::new(cell.clients.sqs.clone(), dlq.clone()))
            .with_max_receive_count(cell.options.max_receive_count),
        handler: Recorder { seen: seen.clone(), validator: Validator::default() },
    };
    let source = EventSource::connect(cell.clients.sqs.clone(), queue, RunnerOptions::default()).await.expect("queue");
    // Poll until the queue is quiet: failing records come back after their
    // visibility timeout until SQS dead-letters them.
    let mut quiet = 0;
    for _ in 0..60 {
        let stats = source.poll_once(&mut function).await.expect("poll");
        quiet = if stats.received == 0 { quiet + 1 } else { 0 };
        if quiet >= 3 {
            break;
        }
    }

    let seen = seen.lock().expect("lock").clone();
    let of = |invoice: &str| seen.iter().filter(|(i, _)| i == invoice).map(|(_, s)| s.as_str()).collect::<Vec<_>>();
    assert_eq!(of("INV-A"), vec!["seq-0", "seq-1", "seq-2"], "A in order, once each, not blocked by the poison");
    assert_eq!(of("INV-C"), vec!["seq-0", "seq-1"]);
    assert!(of("INV-BUSINESS-1").is_empty());

    // The DLQ holds the poison and the refused record, each with its reason.
    let mut in_dlq = Vec::new();
    for _ in 0..5 {
        let r = cell
            .clients
            .sqs
            .receive_message()
            .queue_url(&dlq)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive DLQ");
        for m in r.messages() {
            let reason = m
                .message_attributes()
                .and_then(|a| a.get(REASON_ATTRIBUTE))
                .and_then(|v| v.string_value())
                .map(str::to_owned);
            in_dlq.push((m.body().unwrap_or_default().to_owned(), reason));
            cell.clients
                .sqs
                .delete_message()
                .queue_url(&dlq)
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .send()
                .await
                .expect("delete");
        }
    }
    assert_eq!(in_dlq.len(), 2, "{in_dlq:?}");
    let poison = in_dlq.iter().find(|(b, _)| b.starts_with("{this")).expect("poison in the DLQ");
    assert!(
        poison
            .1
            .as_deref()
            .is_some_and(|r| r.contains("not valid JSON") || r.contains("invalid_json") || r.contains("envelope")),
        "{poison:?}"
    );
    assert!(
        in_dlq.iter().any(|(b, r)| b.contains("INV-BUSINESS-1")
            && r.as_deref().is_some_and(|r| r.starts_with("business, gave up after 2"))),
        "{in_dlq:?}"
    );
}
