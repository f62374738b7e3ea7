//! The batch core's metrics come out as CloudWatch Embedded Metric Format
//! documents with the counts of what happened. (One test per binary: the
//! `metrics` recorder is process-wide.)

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use bems_batch::{RecordError, RecordHandler, process_sqs_batch};
use serde_json::Value;

/// Refuses group A's second record (a business failure); handles the rest.
struct RefuseA2;

impl RecordHandler for RefuseA2 {
    async fn handle(&mut self, record: &SqsMessage) -> Result<(), RecordError> {
        match record.message_id.as_deref() {
            Some("a2") => Err(RecordError::business("the ledger is closed")),
            _ => Ok(()),
        }
    }
}

#[tokio::test]
async fn batch_outcomes_are_emitted_as_emf() {
    let collector = metrics_cloudwatch_embedded::Builder::new()
        .cloudwatch_namespace(bems_core::contract::METRICS_NAMESPACE)
        .with_dimension("Function", "test")
        .with_timestamp(1_795_700_700_000)
        .init()
        .expect("recorder");
    let event: SqsEvent =
        serde_json::from_str(include_str!("../fixtures/example-sqs-event-fifo.json")).expect("fixture");
    let response = process_sqs_batch(&event, &mut RefuseA2).await;
    assert_eq!(response.batch_item_failures.len(), 2);

    let mut out = Vec::new();
    collector.flush(&mut out).expect("flush");
    let docs: Vec<Value> = String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON document"))
        .collect();
    let value = |name: &str, class: Option<&str>| -> Option<f64> {
        docs.iter().filter(|d| class.is_none_or(|c| d["class"] == c)).find_map(|d| {
            d[name].as_f64().or_else(|| d[name].as_array().and_then(|a| a.first()).and_then(Value::as_f64))
        })
    };
    for d in &docs {
        let meta = &d["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(meta["Namespace"], bems_core::contract::METRICS_NAMESPACE, "{d}");
        assert_eq!(d["_aws"]["Timestamp"], 1_795_700_700_000_u64, "{d}");
        assert_eq!(d["Function"], "test");
    }
    // a1, b1, b2 handled; a2 refused; a3 held back behind it.
    assert_eq!(value("Processed", None), Some(3.0), "{docs:?}");
    assert_eq!(value("Failed", Some("business")), Some(1.0), "{docs:?}");
    assert_eq!(value("Failed", Some("held_back")), Some(1.0), "{docs:?}");
}
