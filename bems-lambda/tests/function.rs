//! A stage function is built once per instance: what it remembers lasts
//! from one invocation to the next, as on Lambda.

use std::sync::{Arc, Mutex};

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use bems_batch::NoDeadLetter;
use bems_core::envelope::PutEventsEntry;
use bems_core::partition::Partition;
use bems_core::publish::{BusError, EntryResult, EventBus};
use bems_core::{Stage, Status};
use bems_lambda::config::StageConfig;
use bems_lambda::function::StageFunction;
use bems_lambda::idempotency::NoStore;
use lambda_runtime::{Context, LambdaEvent, Service};

/// Accepts every entry and counts the calls.
#[derive(Clone, Default)]
struct CountingBus(Arc<Mutex<Vec<PutEventsEntry>>>);

impl EventBus for CountingBus {
    async fn put_events(&self, entries: &[PutEventsEntry]) -> Result<Vec<EntryResult>, BusError> {
        self.0.lock().expect("lock").extend(entries.iter().cloned());
        Ok(entries.iter().map(|_| EntryResult::Accepted("eb".into())).collect())
    }
}

fn config() -> StageConfig {
    let vars = [
        ("BEMS_CELL_ID", "c1"),
        ("BEMS_PARTITIONS", "4"),
        ("AWS_REGION", "eu-west-1"),
        ("BEMS_ACCOUNT_ID", "123456789012"),
        ("BEMS_DLQ_URL", "https://sqs.eu-west-1.amazonaws.com/123456789012/bems-c1-ingestion-dlq.fifo"),
    ];
    StageConfig::from_lookup(Stage::Ingestion, |name| {
        vars.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned())
    })
    .expect("config")
}

/// A submitted invoice, delivered as SQS message `message_id`: the same
/// event id in every delivery, as SQS redelivers it.
fn delivery(message_id: &str) -> LambdaEvent<SqsEvent> {
    let mut e = bems_core::Validator::new(bems_core::ValidationOptions::consumer())
        .parse(include_bytes!("../../bems-core/fixtures/example-invoice-event.json"))
        .expect("fixture");
    e.stage = Stage::Ingestion;
    e.status = Status::Submitted;
    e.previous_status = None;
    e.issue_date = chrono::Utc::now().date_naive();
    e.payment_terms = bems_core::PaymentTerms::net(e.issue_date, e.payment_terms.net_days);
    let partitions = bems_core::partition::PartitionCount::new(4).expect("4");
    e.metadata.partition = Partition::for_invoice(&e.invoice_id, partitions);
    let mut record = SqsMessage::default();
    record.message_id = Some(message_id.to_owned());
    record.body = Some(e.to_json());
    record.attributes.insert("MessageGroupId".into(), "ingestion-p03".into());
    let mut event = SqsEvent::default();
    event.records = vec![record];
    LambdaEvent::new(event, Context::default())
}

#[tokio::test]
async fn a_second_invocation_with_the_same_event_does_not_republish() {
    let bus = CountingBus::default();
    let function = StageFunction::new(config()).build(bus.clone(), NoDeadLetter, NoStore);
    let mut service = bems_batch::lambda::service(function);

    let first = service.call(delivery("m-1")).await.expect("first invocation");
    assert!(first.batch_item_failures.is_empty(), "{first:?}");
    assert_eq!(bus.0.lock().expect("lock").len(), 1, "the first delivery publishes the next event");

    // The same event again, in a later invocation of the same instance
    // (a redelivery after a lost delete): already handled, nothing sent.
    let second = service.call(delivery("m-2")).await.expect("second invocation");
    assert!(second.batch_item_failures.is_empty(), "{second:?}");
    assert_eq!(bus.0.lock().expect("lock").len(), 1, "the second delivery published again");
}
