//! All four stage processors on LocalStack, run by the local event-source
//! runner: submitted invoices come out posted, every status change reaches
//! the status-change queue exactly once, and nothing is left behind.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use bems_cli::provision::ProvisionOptions;
use bems_core::fields::InvoiceId;
use bems_core::{Currency, Stage, Status};
use bems_e2e::{Cell, environment, event};
use bems_lambda::batch::BatchProcessor;
use bems_lambda::processor::StageProcessor;
use bems_lambda::sqs::{ProcessorFunction, RunnerOptions, SqsDeadLetter, run};
use bems_lambda::stages::{Approvals, PurchaseOrders, Rules};
use rust_decimal::Decimal;
use tokio::sync::watch;

/// Every invoice has an order for exactly its amount.
#[derive(Clone)]
struct Orders(HashMap<String, Decimal>);

impl PurchaseOrders for Orders {
    fn expected_amount(&self, invoice: &InvoiceId, _: Currency) -> Option<Decimal> {
        self.0.get(invoice.as_str()).copied()
    }
}

/// Everything above the automatic limit is approved.
#[derive(Clone)]
struct AllApproved;

impl Approvals for AllApproved {
    fn approved(&self, _: &InvoiceId) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoices_flow_through_all_four_stages_once_each() {
    let Some(env) = environment().await else { return };
    let cell =
        Cell::create(&env, 4, ProvisionOptions { visibility_timeout_secs: 10, ..ProvisionOptions::default() }).await;
    const INVOICES: usize = 100;
    let events: Vec<_> = (0..INVOICES)
        .map(|i| event(&format!("INV-FLOW-{i:04}"), Stage::Ingestion, Status::Submitted, None, 0))
        .collect();
    let orders = Orders(events.iter().map(|e| (e.invoice_id.to_string(), e.amount.value())).collect());

    let (stop, stopped) = watch::channel(false);
    for stage in Stage::ALL {
        let queue = cell.queue_url(&cell.spec.queue_name(stage)).await;
        let dlq = cell.queue_url(&cell.spec.dlq_name(stage)).await;
        let function = ProcessorFunction {
            processor: BatchProcessor::new()
                .with_dead_letter(SqsDeadLetter::new(cell.clients.sqs.clone(), dlq))
                .with_max_receive_count(cell.options.max_receive_count),
            handler: StageProcessor::new(stage, Rules::default(), cell.publisher(), orders.clone(), AllApproved),
        };
        let mut stopped = stopped.clone();
        tokio::spawn(run(
            cell.clients.sqs.clone(),
            queue,
            RunnerOptions { batch_size: 10, wait_seconds: 1 },
            function,
            Duration::from_millis(100),
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ));
    }

    let outcomes = cell.publisher().publish(events.clone()).await;
    assert!(outcomes.iter().all(|o| o.is_accepted()), "{:?}", outcomes.iter().find(|o| !o.is_accepted()));
    let changes = cell.drain(&cell.spec.status_queue_name(), INVOICES * 5, Duration::from_secs(60)).await;
    let _ = stop.send(true);

    let mut per_invoice: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in &changes {
        let d = &c["detail"];
        per_invoice
            .entry(d["invoiceId"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push(d["status"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(per_invoice.len(), INVOICES, "every invoice reached the status queue");
    let want: BTreeSet<&str> = ["submitted", "ingested", "reconciled", "authorized", "posted"].into();
    for (invoice, statuses) in &per_invoice {
        assert_eq!(statuses.len(), 5, "{invoice}: {statuses:?}");
        assert_eq!(statuses.iter().map(String::as_str).collect::<BTreeSet<_>>(), want, "{invoice}: once each");
    }
    assert_eq!(changes.len(), INVOICES * 5, "no duplicates");
    for stage in Stage::ALL {
        assert!(
            cell.drain(&cell.spec.queue_name(stage), 0, Duration::from_secs(1)).await.is_empty(),
            "{stage} queue left over"
        );
        assert!(
            cell.drain(&cell.spec.dlq_name(stage), 0, Duration::from_secs(1)).await.is_empty(),
            "{stage} DLQ not empty"
        );
    }
}
