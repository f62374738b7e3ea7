//! A cell on LocalStack, end to end: provisioning, the producer SDK, the
//! routing through EventBridge, SNS FIFO and SQS FIFO, deduplication,
//! dead-lettering and redrive. Each test provisions its own uniquely named
//! cell, so runs and tests do not collide.

use std::collections::BTreeMap;
use std::time::Duration;

use bems_cli::provision::{Change, ProvisionOptions, provision};
use bems_core::{Stage, Status};
use bems_e2e::{Cell, environment, event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_twice_changes_nothing_the_second_time() {
    let Some(env) = environment().await else { return };
    let cell = Cell::create(&env, 2, ProvisionOptions::default()).await;
    let first = &cell.report;
    assert_eq!(first.count(Change::Updated), 0, "{first}");
    // bus, archive, bus DLQ, 4 topics, status queue + DLQ, smoke queue,
    // 4 x (queue + DLQ), 12 subscriptions, 4 x (route queue + DLQ), 8 rules,
    // 8 targets, the unrouted queue, rule and target; ingress: API, 5
    // resources, validator, 4 models, 4 methods, 5 gateway responses,
    // deployment, key, plan, plan key.
    assert_eq!(
        first.count(Change::Created),
        (1 + 1 + 1 + 4 + 2 + 1 + 8 + 12 + 8 + 8 + 8 + 3) + (1 + 5 + 1 + 4 + 4 + 5 + 1 + 1 + 1 + 1),
        "{first}"
    );
    let second = provision(&cell.clients, &cell.spec, &cell.options).await.expect("second run").report;
    assert_eq!(second.count(Change::Created) + second.count(Change::Updated), 0, "{second}");
    assert_eq!(second.steps.len(), first.steps.len());

    let removed = bems_cli::teardown::teardown(&cell.clients, &cell.spec).await.expect("teardown");
    // 8 stage rules and the unrouted rule, archive, bus, plan, key, API, 4
    // topics, 21 queues (bus DLQ, unrouted, status queue and DLQ, smoke, and
    // per stage queue, DLQ, route queue and its DLQ).
    assert_eq!(removed.count(Change::Deleted), 9 + 1 + 1 + 1 + 1 + 1 + 4 + 21, "{removed}");
    let again = bems_cli::teardown::teardown(&cell.clients, &cell.spec).await.expect("teardown again");
    assert_eq!(again.count(Change::Deleted), 0, "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_event_reaches_its_stage_queue_and_the_status_queue_only() {
    let Some(env) = environment().await else { return };
    let cell = Cell::create(&env, 4, ProvisionOptions::default()).await;
    let e = event("INV-E2E-1", Stage::Reconciliation, Status::Ingested, Some(Status::Submitted), 0);
    let outcomes = cell.publisher().publish(vec![e.clone()]).await;
    assert!(outcomes[0].is_accepted(), "{outcomes:?}");

    let got = cell.drain(&cell.spec.queue_name(Stage::Reconciliation), 1, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 1, "the stage queue gets the event once");
    assert_eq!(got[0]["detail"]["eventId"], e.event_id.to_string());
    assert_eq!(got[0]["detail-type"], "Invoice Status Changed");
    let status = cell.drain(&cell.spec.status_queue_name(), 1, Duration::from_secs(15)).await;
    assert_eq!(status.len(), 1, "the status queue records it");
    for other in Stage::ALL.into_iter().filter(|s| *s != Stage::Reconciliation) {
        let none = cell.drain(&cell.spec.queue_name(other), 0, Duration::from_secs(1)).await;
        assert!(none.is_empty(), "{other} queue got {none:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_events_reach_the_status_queue_but_no_processor() {
    let Some(env) = environment().await else { return };
    let cell = Cell::create(&env, 2, ProvisionOptions::default()).await;
    let posted = event("INV-E2E-2", Stage::Posting, Status::Posted, Some(Status::Authorized), 0);
    assert!(cell.publisher().publish(vec![posted]).await[0].is_accepted());
    assert_eq!(cell.drain(&cell.spec.status_queue_name(), 1, Duration::from_secs(15)).await.len(), 1);
    assert!(cell.drain(&cell.spec.queue_name(Stage::Posting), 0, Duration::from_secs(2)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_event_id_is_delivered_once() {
    let Some(env) = environment().await else { return };
    let cell = Cell::create(&env, 2, ProvisionOptions::default()).await;
    let e = event("INV-E2E-3", Stage::Ingestion, Status::Submitted, None, 0);
    let publisher = cell.publisher();
    // Twice, in separate calls: a producer retrying after a lost response.
    assert!(publisher.publish(vec![e.clone()]).await[0].is_accepted());
    assert!(publisher.publish(vec![e.clone()]).await[0].is_accepted());
    let got = cell.drain(&cell.spec.queue_name(Stage::Ingestion), 2, Duration::from_secs(8)).await;
    assert_eq!(got.len(), 1, "deduplicated on eventId: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_message_ends_in_the_dlq_and_redrive_returns_it_without_loss() {
    let Some(env) = environment().await else { return };
    let options = ProvisionOptions { max_receive_count: 2, ..ProvisionOptions::default() };
    let cell = Cell::create(&env, 2, options).await;
    let e = event("INV-E2E-4", Stage::Authorization, Status::Reconciled, Some(Status::Ingested), 0);
    assert!(cell.publisher().publish(vec![e.clone()]).await[0].is_accepted());

    let queue = cell.queue_url(&cell.spec.queue_name(Stage::Authorization)).await;
    let dlq = cell.queue_url(&cell.spec.dlq_name(Stage::Authorization)).await;
    // A consumer that keeps failing: receives and never deletes. Visibility
    // 0 makes the message visible again at once; each receive counts.
    let mut receives = 0;
    for _ in 0..40 {
        let r = cell
            .clients
            .sqs
            .receive_message()
            .queue_url(&queue)
            .visibility_timeout(0)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        receives += r.messages().len();
        if receives > 2 && r.messages().is_empty() {
            break;
        }
    }
    assert_eq!(receives, 2, "received exactly maxReceiveCount times before dead-lettering");
    let moved = bems_cli::redrive::redrive_fifo(&cell.clients.sqs, &dlq, &queue).await.expect("redrive");
    assert_eq!(moved.message_ids.len(), 1);
    let back = cell.drain(&cell.spec.queue_name(Stage::Authorization), 1, Duration::from_secs(8)).await;
    assert_eq!(back.len(), 1, "the redriven message is back in its queue");
    assert_eq!(back[0]["detail"]["eventId"], e.event_id.to_string());
    assert!(cell.drain(&cell.spec.dlq_name(Stage::Authorization), 0, Duration::from_secs(1)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_order_per_invoice_holds_across_1000_events_over_all_partitions() {
    let Some(env) = environment().await else { return };
    let cell = Cell::create(&env, 16, ProvisionOptions::default()).await;
    // 100 invoices x 10 events each, interleaved as a producer would send them.
    let events: Vec<_> = (0..10)
        .flat_map(|seq| {
            (0..100).map(move |i| event(&format!("INV-ORDER-{i:03}"), Stage::Ingestion, Status::Submitted, None, seq))
        })
        .collect();
    let outcomes = cell.publisher().publish(events).await;
    let accepted = outcomes.iter().filter(|o| o.is_accepted()).count();
    assert_eq!(accepted, 1000, "{:?}", outcomes.iter().find(|o| !o.is_accepted()));

    let got = cell.drain(&cell.spec.queue_name(Stage::Ingestion), 1000, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1000, "sent 1000, received {}", got.len());
    let mut per_invoice: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut partitions = std::collections::BTreeSet::new();
    for body in &got {
        let d = &body["detail"];
        let seq: u32 = d["metadata"]["correlationId"]
            .as_str()
            .and_then(|c| c.strip_prefix("seq-"))
            .and_then(|n| n.parse().ok())
            .expect("seq");
        per_invoice.entry(d["invoiceId"].as_str().unwrap_or_default().to_owned()).or_default().push(seq);
        partitions.insert(d["metadata"]["partition"].as_u64().unwrap_or_default());
    }
    assert_eq!(partitions.len(), 16, "100 invoices spread over all 16 partitions");
    for (invoice, seqs) in per_invoice {
        assert_eq!(seqs, (0..10).collect::<Vec<_>>(), "{invoice} out of order");
    }
}
