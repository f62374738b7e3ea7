//! An SQS batch function on `bems-batch` alone, with no AWS SDK: each
//! record is a ledger line `{"account": "...", "cents": N}`.
//!
//! - a body that is not such a line is poison: it goes to the dead-letter
//!   sink at once, with the reason, and never blocks its FIFO group;
//! - a line for a closed account is a business failure: SQS redelivers it
//!   and the records of its group behind it, in order;
//! - everything else is counted, and the count lasts as long as the
//!   instance.
//!
//! On Lambda (`AWS_LAMBDA_RUNTIME_API` set) it runs on the runtime; here it
//! processes a sample batch and prints the partial batch response.

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use bems_batch::function::{BatchFunction, Invocation, ProcessorFunction};
use bems_batch::{BatchProcessor, DeadLetterError, DeadLetterSink, RecordError, RecordHandler, message_group};

/// Totals the ledger lines it handles.
#[derive(Debug, Default)]
struct Ledger {
    total_cents: i64,
    lines: usize,
}

impl RecordHandler for Ledger {
    async fn handle(&mut self, record: &SqsMessage) -> Result<(), RecordError> {
        let body = record.body.as_deref().ok_or_else(|| RecordError::poison("no body"))?;
        let line: serde_json::Value =
            serde_json::from_str(body).map_err(|e| RecordError::poison(format!("body: {e}")))?;
        let account = line["account"].as_str().ok_or_else(|| RecordError::poison("account: missing"))?;
        let cents = line["cents"].as_i64().ok_or_else(|| RecordError::poison("cents: not a whole number"))?;
        if account.starts_with("closed-") {
            return Err(RecordError::business(format!("account {account} is closed until month-end")));
        }
        self.total_cents += cents;
        self.lines += 1;
        Ok(())
    }
}

/// Prints what it is given; a real function sends it to a queue.
#[derive(Debug, Clone, Copy)]
struct PrintingDeadLetter;

impl DeadLetterSink for PrintingDeadLetter {
    async fn send(&self, record: &SqsMessage, reason: &str) -> Result<(), DeadLetterError> {
        println!("dead-lettered {}: {reason}", record.message_id.as_deref().unwrap_or("?"));
        Ok(())
    }
}

fn function() -> ProcessorFunction<PrintingDeadLetter, Ledger> {
    ProcessorFunction::new(BatchProcessor::new().with_dead_letter(PrintingDeadLetter), Ledger::default())
}

/// A FIFO batch: group `a` has a closed account in the middle.
fn sample() -> SqsEvent {
    let lines = [
        ("m1", "a", r#"{"account": "acme", "cents": 125050}"#),
        ("m2", "a", r#"{"account": "closed-globex", "cents": 990}"#),
        ("m3", "a", r#"{"account": "acme", "cents": 100}"#),
        ("m4", "b", r#"{"account": "initech", "cents": 4200}"#),
        ("m5", "b", "not json"),
        ("m6", "b", r#"{"account": "initech", "cents": 800}"#),
    ];
    let mut event = SqsEvent::default();
    for (id, group, body) in lines {
        let mut record = SqsMessage::default();
        record.message_id = Some(id.to_owned());
        record.body = Some(body.to_owned());
        record.attributes.insert("MessageGroupId".into(), group.to_owned());
        event.records.push(record);
    }
    event
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        return bems_batch::lambda::run(function()).await;
    }
    let event = sample();
    let groups: Vec<_> = event.records.iter().map(|r| message_group(r).unwrap_or("-")).collect();
    println!("a batch of {} records in groups {groups:?}", event.records.len());
    let mut function = function();
    let response = function.call(event, &Invocation::default()).await;
    let failed: Vec<_> = response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
    println!("batch item failures (SQS redelivers these, in order): {failed:?}");
    let ledger = &function.handler;
    println!("handled {} lines, {} cents in all", ledger.lines, ledger.total_cents);
    Ok(())
}
