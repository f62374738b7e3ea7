//! Durable idempotency on moto's DynamoDB: a stage that handles the same
//! event twice, from two instances and long after the first time, publishes
//! the same next event byte for byte; without the store the second one
//! differs (its time), which is what would put a second record in
//! Timestream once the FIFO deduplication window has passed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use aws_sdk_dynamodb::types::AttributeValue;
use bems_batch::process_sqs_batch;
use bems_core::envelope::PutEventsEntry;
use bems_core::fields::InvoiceId;
use bems_core::publish::{BusError, CellTarget, EntryResult, EventBus, Publisher};
use bems_core::{InvoiceEvent, Stage, Status};
use bems_e2e::{event, idempotency_table};
use bems_lambda::idempotency::{DynamoDbStore, IdempotencyStore, NoStore, StoreError, attributes};
use bems_lambda::processor::StageProcessor;
use bems_lambda::stages::{Approvals, PurchaseOrders, Rules};
use rust_decimal::Decimal;

/// Accepts every entry and keeps what it was given.
#[derive(Clone, Default)]
struct Recording(Arc<Mutex<Vec<PutEventsEntry>>>);

impl EventBus for Recording {
    async fn put_events(&self, entries: &[PutEventsEntry]) -> Result<Vec<EntryResult>, BusError> {
        self.0.lock().expect("lock").extend(entries.iter().cloned());
        Ok(entries.iter().enumerate().map(|(i, _)| EntryResult::Accepted(format!("eb-{i}"))).collect())
    }
}

struct NoOrders;
impl PurchaseOrders for NoOrders {
    fn expected_amount(&self, _: &InvoiceEvent) -> Option<Decimal> {
        None
    }
}
struct NoApprovals;
impl Approvals for NoApprovals {
    fn approved(&self, _: &InvoiceId) -> bool {
        false
    }
}

fn moto() -> Option<String> {
    let url = std::env::var("BEMS_MOTO_URL").ok();
    assert!(url.is_some() || !bems_e2e::emulators_required(), "BEMS_REQUIRE_EMULATORS=1 but BEMS_MOTO_URL is not set");
    if url.is_none() {
        eprintln!("skipped: BEMS_MOTO_URL is not set (scripts/test starts moto)");
    }
    url
}

/// The SQS record of a submitted invoice, as the ingestion queue delivers it.
fn record(e: &InvoiceEvent) -> SqsEvent {
    let mut r = SqsMessage::default();
    r.message_id = Some(uuid::Uuid::new_v4().to_string());
    r.body = Some(e.to_json());
    r.attributes.insert("MessageGroupId".into(), "ingestion-p01".into());
    r.attributes.insert("ApproximateReceiveCount".into(), "1".into());
    let mut event = SqsEvent::default();
    event.records = vec![r];
    event
}

/// The cell the tests' processors belong to.
fn target() -> CellTarget {
    CellTarget::new("idem", "us-east-1", "000000000000", 4).expect("target")
}

/// `e` placed in the tests' cell, as its producer would place it (the
/// processors refuse an event in another partition than its invoice's).
fn placed(mut e: InvoiceEvent) -> InvoiceEvent {
    Publisher::new(Recording::default(), target()).place(&mut e);
    e
}

/// A fresh ingestion processor (a new Lambda instance) publishing to `bus`.
fn ingestion<S: IdempotencyStore>(bus: &Recording, store: S) -> StageProcessor<Recording, NoOrders, NoApprovals, S> {
    StageProcessor::new(
        Stage::Ingestion,
        Rules::default(),
        Publisher::new(bus.clone(), target()),
        NoOrders,
        NoApprovals,
    )
    .with_store(store)
}

/// Handles `submitted` with a fresh ingestion processor (a new Lambda
/// instance) and returns the detail it published.
async fn handle_once<S: IdempotencyStore + Send + Sync>(submitted: &InvoiceEvent, store: S) -> String {
    let bus = Recording::default();
    let mut processor = ingestion(&bus, store);
    let response = process_sqs_batch(&record(submitted), &mut processor).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    let published = bus.0.lock().expect("lock").clone();
    assert_eq!(published.len(), 1);
    published[0].detail.clone()
}

#[tokio::test]
async fn a_late_second_handling_publishes_the_stored_event() {
    let Some(moto) = moto() else { return };
    let (client, table) =
        idempotency_table(&moto, &format!("idem-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])).await;
    let store = DynamoDbStore::new(client, table, Duration::from_secs(3600));
    let submitted = placed(event("INV-IDEM-1", Stage::Ingestion, Status::Submitted, None, 0));

    let first = handle_once(&submitted, store.clone()).await;
    // Later, so a fresh decision would carry a later time.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = handle_once(&submitted, store.clone()).await;
    assert_eq!(first, second, "the second handling republished the stored event");

    // The control: without the store the two handlings differ, so the
    // assertion above is what the store buys.
    let a = handle_once(&submitted, NoStore).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let b = handle_once(&submitted, NoStore).await;
    assert_ne!(a, b, "without a store a late second handling makes a different event");
}

#[tokio::test]
async fn the_first_claim_wins_and_a_corrupt_record_is_reported() {
    let Some(moto) = moto() else { return };
    let (client, table) =
        idempotency_table(&moto, &format!("idem-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])).await;
    let store = DynamoDbStore::new(client.clone(), table.clone(), Duration::from_secs(3600));
    let handled = event("INV-IDEM-2", Stage::Reconciliation, Status::Ingested, Some(Status::Submitted), 1);
    let mut one = event("INV-IDEM-2", Stage::Authorization, Status::Reconciled, Some(Status::Ingested), 2);
    let mut two = one.clone();
    one.occurred_at += chrono::Duration::milliseconds(1);
    two.occurred_at += chrono::Duration::milliseconds(2);

    let (a, b) = tokio::join!(store.claim(&handled.event_id, &one), store.claim(&handled.event_id, &two));
    let (a, b) = (a.expect("claim"), b.expect("claim"));
    assert_eq!(a, b, "both claims get the same, first stored, event");
    assert!(a == one || a == two);
    // Stored in DynamoDB with a TTL in the future.
    let item = client
        .get_item()
        .table_name(&table)
        .key(attributes::KEY, AttributeValue::S(handled.event_id.to_string()))
        .send()
        .await
        .expect("get")
        .item()
        .cloned()
        .expect("item");
    let expires: i64 = item[attributes::EXPIRES_AT].as_n().expect("number").parse().expect("integer");
    assert!(expires > chrono::Utc::now().timestamp() + 3000, "{expires}");

    // An unreadable stored event is reported, naming the key and reason.
    let other = event("INV-IDEM-3", Stage::Reconciliation, Status::Ingested, Some(Status::Submitted), 1);
    client
        .put_item()
        .table_name(&table)
        .item(attributes::KEY, AttributeValue::S(other.event_id.to_string()))
        .item(attributes::NEXT, AttributeValue::S("{\"eventId\": 7}".into()))
        .send()
        .await
        .expect("put");
    match store.claim(&other.event_id, &one).await {
        Err(StoreError::Corrupt { key, reason }) => {
            assert_eq!(key, other.event_id.to_string());
            assert!(reason.contains("eventId"), "{reason}");
        }
        other => panic!("expected a corrupt record, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_store_is_a_transient_failure() {
    // Nothing listens on port 9; the record stays in its queue, nothing is
    // published.
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url("http://127.0.0.1:9")
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("t", "t", None, None, "test"))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await;
    let store = DynamoDbStore::new(aws_sdk_dynamodb::Client::new(&config), "none", Duration::from_secs(60));
    let submitted = placed(event("INV-IDEM-4", Stage::Ingestion, Status::Submitted, None, 0));
    let bus = Recording::default();
    let mut processor = ingestion(&bus, store);
    let response = bems_batch::BatchProcessor::new()
        .with_retry(bems_core::retry::RetryPolicy { max_attempts: 2, ..bems_batch::IN_PLACE_RETRY })
        .process(&record(&submitted), &mut processor)
        .await;
    assert_eq!(response.batch_item_failures.len(), 1);
    assert!(bus.0.lock().expect("lock").is_empty(), "nothing published without a claim");
}
