//! The cell template deployed by CloudFormation on LocalStack: the part
//! LocalStack supports (bus, rules, topics, queues, subscriptions, API; see
//! `bems_cli::template::localstack_template`) creates a working cell, and an
//! event POSTed to the deployed API arrives in its stage's queue and the
//! status queue, and in no other stage's queue.

use std::time::{Duration, Instant};

use aws_sdk_cloudformation::types::{Capability, StackStatus};
use bems_cli::provision::Clients;
use bems_cli::template::{TemplateDefaults, localstack_template};
use bems_core::fields::{AccountId, CellId, Region};
use bems_core::partition::PartitionCount;
use bems_core::publish::CellTarget;
use bems_core::routing::CellSpec;
use bems_core::{Stage, Status};
use bems_e2e::{environment, event};
use serde_json::Value;

/// PUTs `body` at `url` on LocalStack's S3 (no credentials needed there).
fn put(url: &str, body: &[u8]) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let response = agent.put(url).send(body).unwrap_or_else(|e| panic!("PUT {url}: {e}"));
    assert!(response.status().is_success(), "PUT {url}: {}", response.status());
}

async fn receive_all(sqs: &aws_sdk_sqs::Client, url: &str, quiet: Duration) -> Vec<Value> {
    let mut got = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < quiet {
        let out = sqs.receive_message().queue_url(url).max_number_of_messages(10).wait_time_seconds(1).send().await;
        for m in out.map(|o| o.messages().to_vec()).unwrap_or_default() {
            got.push(serde_json::from_str(m.body().unwrap_or_default()).unwrap_or(Value::Null));
            let _ =
                sqs.delete_message().queue_url(url).receipt_handle(m.receipt_handle().unwrap_or_default()).send().await;
            last = Instant::now();
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_template_deploys_on_localstack_and_routes_an_event_from_its_api() {
    let Some(env) = environment().await else { return };
    let Some(endpoint) = env.localstack.clone() else {
        eprintln!("skipped: deploys to LocalStack only");
        return;
    };
    let id = format!("cfn-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let spec = CellSpec::new(
        CellId::new(&id).expect("cell id"),
        Region::new(&env.region).expect("region"),
        AccountId::new(&env.account).expect("account"),
        PartitionCount::new(4).expect("partitions"),
    )
    .expect("spec");
    // CloudFormation takes templates over 51,200 bytes from S3 only.
    let template = localstack_template(&spec, &TemplateDefaults::default());
    let bucket = format!("{}/bems-{id}-templates", endpoint.trim_end_matches('/'));
    put(&bucket, b"");
    put(&format!("{bucket}/cell.json"), template.to_string().as_bytes());

    let cfn = aws_sdk_cloudformation::Client::new(&env.config);
    let stack = format!("bems-{id}");
    cfn.create_stack()
        .stack_name(&stack)
        .template_url(format!("{bucket}/cell.json"))
        .capabilities(Capability::CapabilityIam)
        .send()
        .await
        .expect("create the stack");
    let started = Instant::now();
    let outputs = loop {
        let described = cfn.describe_stacks().stack_name(&stack).send().await.expect("describe the stack");
        let s = described.stacks().first().expect("the stack").clone();
        match s.stack_status() {
            Some(StackStatus::CreateComplete) => break s.outputs().to_vec(),
            Some(StackStatus::CreateInProgress) if started.elapsed() < Duration::from_secs(180) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => {
                let events = cfn.describe_stack_events().stack_name(&stack).send().await.ok();
                let failures: Vec<String> = events
                    .iter()
                    .flat_map(|e| e.stack_events())
                    .filter(|e| e.resource_status_reason().is_some())
                    .map(|e| {
                        format!(
                            "{}: {}",
                            e.logical_resource_id().unwrap_or(""),
                            e.resource_status_reason().unwrap_or("")
                        )
                    })
                    .collect();
                panic!("stack ended {other:?}: {failures:#?}");
            }
        }
    };
    let output = |key: &str| {
        outputs
            .iter()
            .find(|o| o.output_key() == Some(key))
            .and_then(|o| o.output_value())
            .unwrap_or_else(|| panic!("no output {key}"))
            .to_owned()
    };

    let clients = Clients::new(&env.config);
    let key = clients
        .apigateway
        .get_api_key()
        .api_key(output("ProducersKeyId"))
        .include_value(true)
        .send()
        .await
        .expect("the producers' key")
        .value()
        .expect("a key value")
        .to_owned();
    // The route forwarder, as the deployed function would run it.
    let stop = bems_e2e::start_forwarder(&clients, &spec);

    let mut e = event("INV-CFN-1", Stage::Reconciliation, Status::Ingested, Some(Status::Submitted), 1);
    let target = CellTarget::new(&id, &env.region, &env.account, 4).expect("target");
    bems_core::publish::Publisher::new(clients.events.clone(), target).place(&mut e);
    let url = format!(
        "{}/restapis/{}/v1/_user_request_/invoices/reconciliation",
        endpoint.trim_end_matches('/'),
        output("ApiId")
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let response = tokio::task::spawn_blocking({
        let (url, key, body) = (url.clone(), key.clone(), e.to_json());
        move || {
            let mut r = agent
                .post(&url)
                .header("Content-Type", "application/json")
                .header("x-api-key", &key)
                .send(body.as_bytes())
                .expect("POST to the deployed API");
            (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default())
        }
    })
    .await
    .expect("join");
    assert_eq!(response.0, 200, "{}", response.1);

    let queue = |name: String| {
        let sqs = clients.sqs.clone();
        async move {
            sqs.get_queue_url().queue_name(name).send().await.expect("queue").queue_url().unwrap_or_default().to_owned()
        }
    };
    let stage_queue = queue(spec.queue_name(Stage::Reconciliation)).await;
    let got = receive_all(&clients.sqs, &stage_queue, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "the reconciliation queue got {got:?}");
    assert_eq!(got[0]["detail"]["eventId"], e.event_id.to_string());
    let status = receive_all(&clients.sqs, &queue(spec.status_queue_name()).await, Duration::from_secs(3)).await;
    assert_eq!(status.len(), 1, "the status queue got {status:?}");
    for other in [Stage::Ingestion, Stage::Authorization, Stage::Posting] {
        let got = receive_all(&clients.sqs, &queue(spec.queue_name(other)).await, Duration::from_secs(2)).await;
        assert!(got.is_empty(), "{other} received {got:?}");
    }

    let _ = stop.send(());
    cfn.delete_stack().stack_name(&stack).send().await.expect("delete the stack");
}
