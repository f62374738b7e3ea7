//! The cell template deployed by CloudFormation on LocalStack: the part
//! LocalStack supports (bus, rules, topics, queues, subscriptions, API; see
//! `bems_template::emulator_template`).
//!
//! - The deployed API accepts exactly what the cell routes: events of the
//!   cell reach their stage's queue and the status queue; a partition above
//!   P, another cell's id, Region or account, or no partition is answered
//!   400 and put nowhere; what a producer puts on the bus directly that no
//!   stage rule takes lands in the unrouted queue; and every request the
//!   API answered 2xx is on a queue of the cell (conservation).
//! - The same API's integration responses, in front of a stub replaying
//!   PutEvents answers (`tests/fixtures/putevents-answers.json`), answer
//!   429 for throttling, 503 for the bus's failures, 502 for the rest, and
//!   never 2xx for an entry the bus did not take.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bems_core::fields::{AccountId, CellId, Region};
use bems_core::partition::PartitionCount;
use bems_core::publish::{CellTarget, Publisher};
use bems_core::routing::CellSpec;
use bems_core::{InvoiceEvent, Stage, Status};
use bems_e2e::{Answer, Env, PutEventsStub, environment, event};
use bems_ops::provision::{Clients, ProvisionOptions};
use bems_template::{TemplateDefaults, emulator_template};
use serde_json::{Value, json};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// A stack deployed from a template on LocalStack (as `bems provision`
/// deploys a cell), deleted when dropped.
struct Stack {
    clients: Clients,
    deployed: bems_ops::provision::Deployed,
}

impl Stack {
    /// Deploys `template` as `name` with the parameters a LocalStack cell
    /// takes.
    async fn deploy(env: &Env, name: &str, template: &Value) -> Stack {
        let clients = Clients::new(&env.config);
        let parameters = ProvisionOptions::default().parameters();
        let deployed = bems_ops::provision::deploy_stack(&clients, name, template, &parameters)
            .await
            .unwrap_or_else(|e| panic!("deploy {name}: {e}"));
        Stack { clients, deployed }
    }

    fn output(&self, key: &str) -> &str {
        self.deployed.outputs.get(key).unwrap_or_else(|| panic!("no output {key}"))
    }

    /// The producers' key.
    async fn api_key(&self) -> String {
        self.clients
            .apigateway
            .get_api_key()
            .api_key(self.output("ProducersKeyId"))
            .include_value(true)
            .send()
            .await
            .expect("the producers' key")
            .value()
            .expect("a key value")
            .to_owned()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let (clients, name) = (self.clients.clone(), self.deployed.report.stack.clone());
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async move {
                if let Err(e) = bems_ops::provision::delete_stack(&clients, &name).await {
                    eprintln!("deleting stack {name} failed: {e}");
                }
            });
        });
    }
}

fn spec(env: &Env, id: &str, partitions: u32) -> CellSpec {
    CellSpec::new(
        CellId::new(id).expect("cell id"),
        Region::new(&env.region).expect("region"),
        AccountId::new(&env.account).expect("account"),
        PartitionCount::new(partitions).expect("partitions"),
    )
    .expect("spec")
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// POSTs `body` to `POST /invoices/<stage>` of the API `api` with `key`:
/// the status and the body.
async fn post(endpoint: &str, api: &str, key: &str, stage: Stage, body: String) -> (u16, String) {
    let url = format!("{}/restapis/{api}/v1/_user_request_/invoices/{stage}", endpoint.trim_end_matches('/'));
    let key = key.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut r = agent()
            .post(&url)
            .header("Content-Type", "application/json")
            .header("x-api-key", &key)
            .send(body.as_bytes())
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default())
    })
    .await
    .expect("join")
}

/// Every message now in the cell's queues, by queue name: each queue is
/// read (and emptied) until it has been quiet for `quiet`.
async fn everything_queued(clients: &Clients, spec: &CellSpec, quiet: Duration) -> BTreeMap<String, Vec<Value>> {
    let mut names = vec![spec.status_queue_name(), spec.status_dlq_name(), spec.unrouted_queue_name()];
    names.push(spec.bus_dlq_name());
    for stage in Stage::ALL {
        names.extend([
            spec.queue_name(stage),
            spec.dlq_name(stage),
            spec.route_queue_name(stage),
            spec.route_dlq_name(stage),
        ]);
    }
    let mut readers = tokio::task::JoinSet::new();
    for name in names {
        let sqs = clients.sqs.clone();
        readers.spawn(async move {
            let url = sqs
                .get_queue_url()
                .queue_name(&name)
                .send()
                .await
                .expect("queue")
                .queue_url()
                .unwrap_or_default()
                .to_owned();
            let mut got = Vec::new();
            let mut last = Instant::now();
            while last.elapsed() < quiet {
                let out =
                    sqs.receive_message().queue_url(&url).max_number_of_messages(10).wait_time_seconds(1).send().await;
                for m in out.map(|o| o.messages().to_vec()).unwrap_or_default() {
                    got.push(serde_json::from_str(m.body().unwrap_or_default()).unwrap_or(Value::Null));
                    let handle = m.receipt_handle().unwrap_or_default();
                    sqs.delete_message().queue_url(&url).receipt_handle(handle).send().await.expect("delete");
                    last = Instant::now();
                }
            }
            (name, got)
        });
    }
    let mut all = BTreeMap::new();
    while let Some(done) = readers.join_next().await {
        let (name, got) = done.expect("a queue reader");
        all.insert(name, got);
    }
    all
}

/// The queues holding the event `id` (as an EventBridge event's detail).
fn holding<'q>(queued: &'q BTreeMap<String, Vec<Value>>, id: &str) -> Vec<&'q str> {
    queued
        .iter()
        .filter(|(_, messages)| messages.iter().any(|m| m["detail"]["eventId"] == id))
        .map(|(name, _)| name.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployed_api_accepts_exactly_what_the_cell_routes_and_loses_nothing_it_accepted() {
    let Some(env) = environment().await else { return };
    let endpoint = env.localstack.clone();
    // The cell as `bems provision` deploys it: the template's emulator
    // part through LocalStack's CloudFormation; its route forwarder runs
    // in-process, as the deployed function would.
    let cell = bems_e2e::Cell::create(&env, 4, ProvisionOptions::default()).await;
    let (spec, clients, key) = (&cell.spec, &cell.clients, cell.ingress.api_key.clone());
    let publisher = cell.publisher();

    // One event of each stage, placed in the cell as a producer places it.
    let mut accepted: Vec<(Stage, InvoiceEvent)> = Vec::new();
    let steps = [
        (Stage::Ingestion, Status::Submitted, None),
        (Stage::Reconciliation, Status::Ingested, Some(Status::Submitted)),
        (Stage::Authorization, Status::Reconciled, Some(Status::Ingested)),
        (Stage::Posting, Status::Authorized, Some(Status::Reconciled)),
    ];
    for (n, (stage, status, previous)) in steps.into_iter().enumerate() {
        let mut e = event(&format!("INV-CFN-{n}"), stage, status, previous, 1);
        publisher.place(&mut e);
        accepted.push((stage, e));
    }
    // And more, so that every partition of every stage is hit: the
    // conservation check below covers them all.
    let mut more: Vec<(Stage, InvoiceEvent)> = Vec::new();
    for n in 0..24 {
        let (stage, status, previous) = steps[n % 4];
        let mut e = event(&format!("INV-CFN-MORE-{n:02}"), stage, status, previous, 1);
        publisher.place(&mut e);
        more.push((stage, e));
    }
    // What no rule of this cell routes, each refused by the models.
    let valid = accepted[1].1.to_json();
    let variant = |what: &str, change: &dyn Fn(&mut Value)| {
        let mut body: Value = serde_json::from_str(&valid).expect("JSON");
        body["eventId"] = json!(uuid::Uuid::new_v4().to_string());
        change(&mut body);
        (what.to_owned(), body)
    };
    let refused = [
        variant("partition P + 1", &|b| b["metadata"]["partition"] = json!(5)),
        variant("another cell", &|b| b["metadata"]["cellId"] = json!("prod-us-1")),
        variant("another Region", &|b| b["metadata"]["region"] = json!("eu-central-1")),
        variant("another account", &|b| b["metadata"]["accountId"] = json!("999999999999")),
        variant("no partition", &|b| {
            b["metadata"].as_object_mut().expect("metadata").remove("partition");
        }),
    ];

    let mut answered_2xx: Vec<String> = Vec::new();
    for (stage, e) in &accepted {
        let (status, body) = post(&endpoint, &cell.ingress.rest_api_id, &key, *stage, e.to_json()).await;
        assert_eq!(status, 200, "{stage}: {body}");
        answered_2xx.push(e.event_id.to_string());
    }
    let mut partitions = std::collections::BTreeSet::new();
    for (stage, e) in &more {
        let (status, _) = post(&endpoint, &cell.ingress.rest_api_id, &key, *stage, e.to_json()).await;
        if (200..300).contains(&status) {
            answered_2xx.push(e.event_id.to_string());
            partitions.insert((*stage, e.metadata.partition.get()));
        }
    }
    assert!(answered_2xx.len() >= accepted.len() + more.len() / 2, "most of the valid events were accepted");
    for (what, body) in &refused {
        let (status, answer) =
            post(&endpoint, &cell.ingress.rest_api_id, &key, Stage::Reconciliation, body.to_string()).await;
        assert_eq!(status, 400, "{what}: {answer}");
        let answer: Value =
            serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {answer}"));
        assert!(answer["message"].is_string(), "{what}: {answer}");
    }

    // A producer using the SDK reaches the bus directly: what no stage
    // rule takes must land in the unrouted queue.
    let mut bypassed: Vec<(String, String)> = Vec::new();
    for (what, change) in
        [("partition P + 1", json!(5)), ("partition as text", json!("2")), ("partition 2.5", json!(2.5))]
    {
        let (_, mut body) = variant(what, &|_| {});
        body["metadata"]["partition"] = change;
        bypassed.push((what.to_owned(), body["eventId"].as_str().unwrap_or_default().to_owned()));
        put_on_bus(clients, spec, &body).await;
    }
    let (_, mut other_cell) = variant("another cell", &|b| b["metadata"]["cellId"] = json!("prod-us-1"));
    other_cell["metadata"]["partition"] = json!(1);
    bypassed.push(("another cell".into(), other_cell["eventId"].as_str().unwrap_or_default().to_owned()));
    put_on_bus(clients, spec, &other_cell).await;

    let queued = everything_queued(clients, spec, Duration::from_secs(8)).await;
    for (stage, e) in &accepted {
        let id = e.event_id.to_string();
        let mut want = vec![spec.queue_name(*stage), spec.status_queue_name()];
        want.sort();
        assert_eq!(holding(&queued, &id), want, "the {stage} event");
    }
    for (what, body) in &refused {
        assert!(holding(&queued, body["eventId"].as_str().unwrap_or_default()).is_empty(), "{what} was put somewhere");
    }
    for (what, id) in &bypassed {
        assert_eq!(holding(&queued, id), vec![spec.unrouted_queue_name()], "{what}, put on the bus directly");
    }
    // Conservation: every request answered 2xx is on a queue of the cell.
    for id in &answered_2xx {
        assert!(!holding(&queued, id).is_empty(), "{id} was answered 2xx and is on no queue");
    }
    eprintln!(
        "{} requests answered 2xx, over {} (stage, partition) pairs, each on a queue",
        answered_2xx.len(),
        partitions.len()
    );
}

/// Puts `detail` on the cell's bus as an SDK producer would, unchecked.
async fn put_on_bus(clients: &Clients, spec: &CellSpec, detail: &Value) {
    use aws_sdk_eventbridge::types::PutEventsRequestEntry;
    let entry = PutEventsRequestEntry::builder()
        .event_bus_name(spec.bus_name())
        .source(bems_core::envelope::EVENT_SOURCE)
        .detail_type(bems_core::envelope::DETAIL_TYPE)
        .detail(detail.to_string())
        .build();
    let out = clients.events.put_events().entries(entry).send().await.expect("PutEvents");
    assert_eq!(out.failed_entry_count(), 0, "{:?}", out.entries());
}

/// The deployed API alone, its methods integrated with `backend` over
/// HTTP instead of EventBridge: the same request templates, integration
/// responses, method responses and gateway responses.
fn api_in_front_of(template: &Value, backend: &str) -> Value {
    let mut api = template.clone();
    if let Some(Value::Object(resources)) = api.get_mut("Resources") {
        resources.retain(|_, r| {
            r["Type"].as_str().is_some_and(|t| t.starts_with("AWS::ApiGateway::"))
                || r["Type"] == "AWS::CloudFormation::WaitConditionHandle"
        });
        for r in resources.values_mut().filter(|r| r["Type"] == "AWS::ApiGateway::Method") {
            let integration = &mut r["Properties"]["Integration"];
            integration["Type"] = json!("HTTP");
            integration["Uri"] = json!(backend);
            if let Some(i) = integration.as_object_mut() {
                i.remove("Credentials");
            }
        }
    }
    if let Some(Value::Object(outputs)) = api.get_mut("Outputs") {
        outputs.retain(|k, _| k == "ApiId" || k == "ProducersKeyId");
    }
    api
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_never_answers_success_for_a_put_the_bus_refused() {
    let Some(env) = environment().await else { return };
    let endpoint = env.localstack.clone();
    let fixtures: Value = serde_json::from_str(include_str!("../fixtures/putevents-answers.json")).expect("fixtures");
    let answers = fixtures["answers"].as_array().expect("answers");
    let stub = PutEventsStub::start().await;
    let id = unique("resp");
    let spec = spec(&env, &id, 2);
    let template = api_in_front_of(&emulator_template(&spec, &TemplateDefaults::default()), &stub.url());
    let stack = Stack::deploy(&env, &spec.stack_name(), &template).await;
    let clients = Clients::new(&env.config);
    let key = stack.api_key().await;
    let mut e = event("INV-RESP-1", Stage::Ingestion, Status::Submitted, None, 1);
    Publisher::new(clients.events.clone(), CellTarget::new(&id, &env.region, &env.account, 2).expect("target"))
        .place(&mut e);

    let mut seen = BTreeSet::new();
    for answer in answers {
        let name = answer["name"].as_str().expect("a name");
        let expect = answer["expect"].as_u64().expect("an expected status");
        stub.push(Answer::from_fixture(answer));
        let (status, body) = post(&endpoint, stack.output("ApiId"), &key, Stage::Ingestion, e.to_json()).await;
        assert_eq!(u64::from(status), expect, "{name}: answered {status}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap_or_else(|err| panic!("{name}: not JSON ({err}): {body}"));
        let refused = answer["status"] != 200 || answer["body"]["FailedEntryCount"] != 0;
        if refused {
            assert!(!(200..300).contains(&status), "{name}: a refused put answered {status}");
            assert!(body["errorCode"].is_string() && body["message"].is_string(), "{name}: {body}");
        } else {
            assert_eq!(body["failedEntryCount"], 0, "{name}: {body}");
        }
        seen.insert(expect);
    }
    assert_eq!(seen, BTreeSet::from([200, 429, 502, 503]), "every mapping was exercised");
    // What the stub received is the PutEvents request the template makes:
    // one entry of the cell's bus whose detail is the body.
    let requests = stub.requests();
    assert_eq!(requests.len(), answers.len());
    let request: Value = serde_json::from_str(&requests[0]).expect("the request is JSON");
    let entry = &request["Entries"][0];
    assert_eq!(entry["EventBusName"], spec.bus_name().as_str());
    let detail: Value = serde_json::from_str(entry["Detail"].as_str().expect("detail text")).expect("detail JSON");
    assert_eq!(detail["eventId"], e.event_id.to_string());
}
