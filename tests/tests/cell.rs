//! A cell on LocalStack, end to end: provisioning, the producer SDK, the
//! routing through EventBridge, SNS FIFO and SQS FIFO, deduplication,
//! dead-lettering and redrive. Each test provisions its own uniquely named
//! cell, so runs and tests do not collide.

use std::collections::BTreeMap;
use std::time::Duration;

use bems_core::{Stage, Status};
use bems_e2e::{Cell, environment, event};
use bems_ops::provision::{Change, ProvisionOptions, provision};

/// The provisioned cell is the template's emulator part: every resource
/// of it, and nothing else, is in the stack; every queue is encrypted with
/// the cell's customer managed key (what the security stack's Guard rule
/// asks); a second run changes nothing; teardown removes the stack and a
/// second teardown finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_deploys_the_template_and_twice_changes_nothing() {
    let Some(env) = environment().await else { return };
    let cell = Cell::create(&env, 2, ProvisionOptions::default()).await;
    let first = &cell.report;
    assert_eq!(first.change, Change::Created, "{first}");
    let template = bems_template::emulator_template(&cell.spec, &bems_template::TemplateDefaults::default());
    let wanted: BTreeMap<String, String> = template["Resources"]
        .as_object()
        .expect("resources")
        .iter()
        .map(|(id, r)| (id.clone(), r["Type"].as_str().unwrap_or_default().to_owned()))
        .collect();
    let deployed: BTreeMap<String, String> =
        first.resources.iter().map(|r| (r.logical_id.clone(), r.resource_type.clone())).collect();
    assert_eq!(deployed, wanted, "the stack holds exactly the template's resources");

    let key = first.resources.iter().find(|r| r.logical_id == "CellKey").expect("the cell key").physical_id.clone();
    let queues: Vec<&str> = first
        .resources
        .iter()
        .filter(|r| r.resource_type == "AWS::SQS::Queue")
        .map(|r| r.physical_id.as_str())
        .collect();
    assert_eq!(queues.len(), 21, "bus DLQ, unrouted, status + DLQ, smoke, 4 x (queue, DLQ, route, route DLQ)");
    for url in queues {
        let attributes = cell
            .clients
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::KmsMasterKeyId)
            .send()
            .await
            .expect("queue attributes");
        let used = attributes
            .attributes()
            .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::KmsMasterKeyId))
            .cloned()
            .unwrap_or_default();
        assert!(
            used == key || used.ends_with(&format!("key/{key}")),
            "{url} is encrypted with {used:?}, not the cell key {key}"
        );
    }

    let second = provision(&cell.clients, &cell.spec, &cell.options).await.expect("second run").report;
    assert_eq!(second.change, Change::Unchanged, "{second}");
    assert_eq!(second.resources, first.resources);

    let removed = bems_ops::provision::teardown(&cell.clients, &cell.spec).await.expect("teardown");
    assert_eq!(removed.change, Change::Deleted, "{removed}");
    assert_eq!(removed.resources.len(), wanted.len());
    let again = bems_ops::provision::teardown(&cell.clients, &cell.spec).await.expect("teardown again");
    assert_eq!(again.change, Change::Unchanged, "{again}");
    assert!(again.resources.is_empty());
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
    let moved = bems_ops::redrive::redrive_fifo(&cell.clients.sqs, &dlq, &queue).await.expect("redrive");
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
    // What is tested is the order, not how fast a loaded LocalStack takes
    // 1,000 events over 66 rules: the publisher may take its time.
    let patient = bems_core::retry::RetryPolicy { deadline: Duration::from_secs(300), ..Default::default() };
    let outcomes = cell.publisher().with_retry(patient).publish(events).await;
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
