//! The stock reconciliation processor with our own purchase-order system
//! plugged in: the whole function is [`Erp`] and the four lines of `main`
//! on Lambda. Nothing of the entry point is copied: configuration,
//! clients, the batch core, dead-lettering and idempotency come with
//! `StageFunction`.
//!
//! Outside Lambda it runs two invoices through the same function, with a
//! bus that prints what it would publish instead of EventBridge.

use std::collections::HashMap;

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use bems_batch::NoDeadLetter;
use bems_batch::function::{BatchFunction, Invocation};
use bems_core::envelope::PutEventsEntry;
use bems_core::fields::{EventId, InvoiceId};
use bems_core::publish::{BusError, EntryResult, EventBus};
use bems_core::{InvoiceEvent, Partition, PartitionCount, Stage, Validator};
use bems_lambda::config::StageConfig;
use bems_lambda::function::StageFunction;
use bems_lambda::idempotency::NoStore;
use bems_lambda::stages::PurchaseOrders;
use rust_decimal::Decimal;

/// Our ERP's open purchase orders: the amount each invoice should have.
/// A real one would query the ERP (and cache, since the function lives
/// across invocations).
struct Erp {
    expected: HashMap<String, Decimal>,
}

impl PurchaseOrders for Erp {
    fn expected_amount(&self, invoice: &InvoiceEvent) -> Option<Decimal> {
        // `None` means "no purchase order yet": the record is retried.
        self.expected.get(invoice.invoice_id.as_str()).copied()
    }
}

fn erp() -> Erp {
    let expected = [("INV-2026-000123", Decimal::new(125_050, 2)), ("INV-2026-000124", Decimal::new(99_900, 2))];
    Erp { expected: expected.into_iter().map(|(id, amount)| (id.to_owned(), amount)).collect() }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        let config = StageConfig::from_env(Stage::Reconciliation)?;
        return StageFunction::new(config).with_purchase_orders(erp()).run().await;
    }
    // Here: the configuration the template would give the function.
    let vars = [
        ("BEMS_CELL_ID", "demo"),
        ("BEMS_PARTITIONS", "4"),
        ("AWS_REGION", "eu-west-1"),
        ("BEMS_ACCOUNT_ID", "123456789012"),
        ("BEMS_DLQ_URL", "unused-here"),
    ];
    let config = StageConfig::from_lookup(Stage::Reconciliation, |name| {
        vars.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned())
    })?;
    let partitions = config.cell.partitions();
    let mut function = StageFunction::new(config).with_purchase_orders(erp()).build(Printing, NoDeadLetter, NoStore);
    let batch = batch(partitions)?;
    let response = function.call(batch, &Invocation::default()).await;
    println!("batch item failures: {:?}", response.batch_item_failures);
    Ok(())
}

/// Two ingested invoices: one matching its purchase order, one 10% off.
fn batch(partitions: PartitionCount) -> Result<SqsEvent, Box<dyn std::error::Error + Send + Sync>> {
    let fixture = include_bytes!("../../../bems-core/fixtures/example-invoice-event.json");
    let mut event = SqsEvent::default();
    for (n, (id, cents)) in [("INV-2026-000123", 125_050), ("INV-2026-000124", 109_890)].into_iter().enumerate() {
        let mut e = Validator::default().parse(fixture).map_err(|v| v.to_string())?;
        e.invoice_id = InvoiceId::new(id)?;
        e.event_id = EventId::random();
        e.amount = bems_core::Amount::from_json_number(&Decimal::new(cents, 2).to_string())?;
        e.issue_date = chrono::Utc::now().date_naive();
        e.payment_terms = bems_core::PaymentTerms::net(e.issue_date, e.payment_terms.net_days);
        e.metadata.partition = Partition::for_invoice(&e.invoice_id, partitions);
        let mut record = SqsMessage::default();
        record.message_id = Some(format!("m{n}"));
        record
            .attributes
            .insert("MessageGroupId".into(), bems_core::partition::message_group_id(e.stage, e.metadata.partition));
        record.body = Some(e.to_json());
        event.records.push(record);
    }
    Ok(event)
}

/// Prints each next event instead of sending it.
struct Printing;

impl EventBus for Printing {
    async fn put_events(&self, entries: &[PutEventsEntry]) -> Result<Vec<EntryResult>, BusError> {
        for entry in entries {
            let next =
                InvoiceEvent::from_json(entry.detail.as_bytes()).map_err(|e| BusError::Permanent(e.to_string()))?;
            let reason = next.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default();
            println!("would publish: {} {} -> {}{reason}", next.invoice_id, next.status, next.stage);
        }
        Ok(entries.iter().map(|_| EntryResult::Accepted("printed".into())).collect())
    }
}
