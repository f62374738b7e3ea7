//! # bems-e2e
//!
//! Shared set-up for the end-to-end tests in `tests/tests/`: a uniquely
//! named cell provisioned on the running LocalStack, its route forwarder
//! running in-process, its store on the test PostgreSQL ([`postgres`]),
//! and helpers to publish and drain. The tests run when `BEMS_LOCALSTACK_URL` is
//! set (`scripts/test` sets it, and `BEMS_LOCALSTACK_URLS` when it starts
//! several LocalStacks) and say they are skipped otherwise.

use std::time::{Duration, Instant};

use aws_sdk_sqs::config::Credentials;
use bems_core::fields::{AccountId, CellId, CorrelationId, EventId, InvoiceId, Region};
use bems_core::partition::PartitionCount;
use bems_core::publish::{CellTarget, Publisher};
use bems_core::routing::CellSpec;
use bems_core::{InvoiceEvent, Stage, Status};
use bems_ops::ingress::Ingress;
use bems_ops::provision::{Clients, ProvisionOptions, Report, provision};
use serde_json::Value;
use tokio::sync::oneshot;

mod faults;
pub mod postgres;
mod stub;
pub use faults::{Outage, Throttle};
pub use stub::{Answer, PutEventsStub};

/// Where the tests run: a LocalStack (and moto beside it).
#[derive(Debug, Clone)]
pub struct Env {
    /// The AWS configuration.
    pub config: aws_config::SdkConfig,
    /// LocalStack's endpoint.
    pub localstack: String,
    /// The account cells are created in.
    pub account: String,
    /// The Region cells are created in.
    pub region: String,
    /// This test's share of its LocalStack, given back when the last clone
    /// is dropped.
    _lease: std::sync::Arc<Lease>,
}

fn timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .operation_timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5))
        .build()
}

/// How many tests of this process use each LocalStack, by URL.
static LEASES: std::sync::Mutex<Vec<(String, usize)>> = std::sync::Mutex::new(Vec::new());

/// A test's use of one LocalStack.
#[derive(Debug)]
struct Lease(String);

impl Lease {
    /// The least used of `urls`, taken.
    fn take(urls: &[String]) -> Lease {
        let mut leases = LEASES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for url in urls {
            if !leases.iter().any(|(u, _)| u == url) {
                leases.push((url.clone(), 0));
            }
        }
        let chosen = leases
            .iter_mut()
            .filter(|(u, _)| urls.contains(u))
            .min_by_key(|(_, n)| *n)
            .map(|(u, n)| {
                *n += 1;
                u.clone()
            })
            .unwrap_or_default();
        Lease(chosen)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut leases = LEASES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, n)) = leases.iter_mut().find(|(u, _)| *u == self.0) {
            *n = n.saturating_sub(1);
        }
    }
}

/// The test environment, or `None` (the test is skipped, saying so, and
/// fails instead under `BEMS_REQUIRE_EMULATORS=1`): LocalStack at
/// `BEMS_LOCALSTACK_URL`, account `000000000000`, `us-east-1`.
///
/// With `BEMS_LOCALSTACK_URLS` (several LocalStacks, comma-separated, as
/// `scripts/test` starts them on a machine with more than one core) each
/// test takes the one the fewest of this process's running tests use: a
/// LocalStack is one Python process that one core saturates, so two tests
/// on two of them run side by side instead of taking turns.
///
/// Each test creates and deletes its own cell. On a real account, deploy a
/// cell with `sam deploy` and check it with `bems smoke` (infra/README.md).
pub async fn environment() -> Option<Env> {
    let urls: Vec<String> = match (std::env::var("BEMS_LOCALSTACK_URLS"), std::env::var("BEMS_LOCALSTACK_URL")) {
        (Ok(urls), _) => urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect(),
        (Err(_), Ok(url)) => vec![url],
        (Err(_), Err(_)) => Vec::new(),
    };
    if urls.is_empty() {
        assert!(!emulators_required(), "BEMS_REQUIRE_EMULATORS=1 but BEMS_LOCALSTACK_URL is not set");
        eprintln!("skipped: set BEMS_LOCALSTACK_URL (scripts/test does)");
        return None;
    }
    let lease = Lease::take(&urls);
    let url = lease.0.clone();
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&url)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "bems-e2e"))
        .timeout_config(timeouts())
        .load()
        .await;
    Some(Env {
        config,
        localstack: url,
        account: "000000000000".into(),
        region: "us-east-1".into(),
        _lease: std::sync::Arc::new(lease),
    })
}

/// A provisioned cell with its route forwarder running; the forwarder stops on drop.
#[allow(missing_debug_implementations, reason = "a test fixture holding SDK clients and a task")]
pub struct Cell {
    /// The cell's routing.
    pub spec: CellSpec,
    /// Clients for the emulator.
    pub clients: Clients,
    /// What provisioning reported.
    pub report: Report,
    /// The options it was provisioned with.
    pub options: ProvisionOptions,
    /// Its HTTP ingress.
    pub ingress: Ingress,
    /// Where it lives.
    pub env: Env,
    stop_forwarder: Option<oneshot::Sender<()>>,
}

impl Cell {
    /// Provisions a new cell named `e2e-<random>` with `partitions` partitions.
    pub async fn create(env: &Env, partitions: u32, options: ProvisionOptions) -> Cell {
        let id = format!("e2e-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let spec = CellSpec::new(
            CellId::new(id).expect("cell id"),
            Region::new(&env.region).expect("region"),
            AccountId::new(&env.account).expect("account"),
            PartitionCount::new(partitions).expect("partitions"),
        )
        .expect("cell within quotas");
        let clients = Clients::new(&env.config);
        let done = provision(&clients, &spec, &options)
            .await
            .unwrap_or_else(|e| panic!("provisioning failed: {e}. Is LocalStack running? (scripts/emulators status)"));
        let stop_forwarder = Some(start_forwarder(&clients, &spec));
        Cell { spec, clients, report: done.report, options, ingress: done.ingress, env: env.clone(), stop_forwarder }
    }

    /// Restarts the route forwarder with clients on `config`: through a
    /// fault proxy, say.
    pub fn restart_forwarder(&mut self, config: &aws_config::SdkConfig) {
        if let Some(stop) = self.stop_forwarder.take() {
            let _ = stop.send(());
        }
        self.stop_forwarder = Some(start_forwarder(&Clients::new(config), &self.spec));
    }

    /// Where this cell's events go.
    pub fn target(&self) -> CellTarget {
        CellTarget::from(&self.spec)
    }

    /// A publisher for this cell.
    pub fn publisher(&self) -> Publisher<aws_sdk_eventbridge::Client> {
        Publisher::new(self.clients.events.clone(), self.target())
    }

    /// The URL of one of the cell's queues.
    pub async fn queue_url(&self, name: &str) -> String {
        self.clients
            .sqs
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("queue {name}: {e}"))
            .queue_url()
            .unwrap_or_default()
            .to_owned()
    }

    /// Receives and deletes from `queue` until `expected` (> 0) messages
    /// arrived and the queue is empty, or until `quiet` passed without a
    /// message. With `expected == 0` it always waits the full `quiet`
    /// period, so "nothing arrived" means nothing arrived in that time.
    /// Returns the bodies in receive order.
    pub async fn drain(&self, queue: &str, expected: usize, quiet: Duration) -> Vec<Value> {
        let url = self.queue_url(queue).await;
        let mut bodies = Vec::new();
        let mut last = Instant::now();
        while last.elapsed() < quiet {
            let batch = self
                .clients
                .sqs
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(10)
                .wait_time_seconds(if expected > 0 && bodies.len() >= expected { 0 } else { 1 })
                .send()
                .await
                .unwrap_or_else(|e| panic!("receive from {queue}: {e}"));
            if batch.messages().is_empty() {
                if expected > 0 && bodies.len() >= expected {
                    break;
                }
                continue;
            }
            last = Instant::now();
            for m in batch.messages() {
                bodies.push(serde_json::from_str(m.body().unwrap_or("null")).unwrap_or(Value::Null));
                self.clients
                    .sqs
                    .delete_message()
                    .queue_url(&url)
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("delete from {queue}: {e}"));
            }
        }
        bodies
    }
}

impl Cell {
    /// The URL of `POST /invoices/<stage>`.
    pub fn url(&self, stage: Stage) -> String {
        self.ingress.localstack_url(&self.env.localstack, stage)
    }
}

/// Stops the forwarder and deletes the cell, also when the test failed, so no
/// test leaves resources behind (which on AWS would cost money).
impl Drop for Cell {
    fn drop(&mut self) {
        if let Some(stop) = self.stop_forwarder.take() {
            let _ = stop.send(());
        }
        let (clients, spec) = (self.clients.clone(), self.spec.clone());
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async move {
                if let Err(e) = bems_ops::provision::teardown(&clients, &spec).await {
                    eprintln!("teardown of cell {} failed: {e}", spec.cell_id());
                }
            });
        });
    }
}

/// Runs the route forwarder (`bems_lambda::forward`, what the Lambda
/// function runs on AWS) over `spec`'s route queues in the background; it
/// stops when the returned sender is used or dropped.
pub fn start_forwarder(clients: &Clients, spec: &CellSpec) -> oneshot::Sender<()> {
    let (stop, stopped) = oneshot::channel();
    let (sns, sqs, spec) = (clients.sns.clone(), clients.sqs.clone(), spec.clone());
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        bems_lambda::forward::run_locally(&spec, sns, sqs, Duration::from_millis(100), shutdown)
            .await
            .expect("the route queues exist");
    });
    stop
}

/// A valid event of `invoice`: the fixture with a fresh id, moved to
/// `stage`/`status` after `previous`, with `seq` in its correlation id.
pub fn event(invoice: &str, stage: Stage, status: Status, previous: Option<Status>, seq: u32) -> InvoiceEvent {
    let mut e = InvoiceEvent::from_json(include_bytes!("../../bems-core/fixtures/example-invoice-event.json"))
        .expect("fixture");
    e.event_id = EventId::random();
    e.invoice_id = InvoiceId::new(invoice).expect("invoice id");
    e.stage = stage;
    e.status = status;
    e.previous_status = previous;
    e.occurred_at = chrono::Utc::now();
    // Issued today, so that ingestion's age rule accepts it whenever the
    // tests run.
    e.issue_date = e.occurred_at.date_naive();
    e.payment_terms = bems_core::PaymentTerms::net(e.issue_date, e.payment_terms.net_days);
    e.metadata.correlation_id = CorrelationId::new(format!("seq-{seq}")).expect("correlation id");
    e
}

/// A fresh database and table in moto's Timestream at `moto`.
pub async fn timestream_table(moto: &str, spec: &CellSpec) -> bems_lambda::timestream::TimestreamTable {
    let client = aws_sdk_timestreamwrite::Client::new(&moto_config(moto).await);
    let database = spec.timestream_database();
    client.create_database().database_name(&database).send().await.expect("create database in moto");
    client
        .create_table()
        .database_name(&database)
        .table_name(bems_core::contract::TIMESTREAM_TABLE)
        .send()
        .await
        .expect("create table in moto");
    bems_lambda::timestream::TimestreamTable {
        client,
        database,
        table: bems_core::contract::TIMESTREAM_TABLE.to_owned(),
    }
}

/// Whether a test that finds no emulator must fail rather than skip:
/// `scripts/test` sets `BEMS_REQUIRE_EMULATORS=1` once it has started them,
/// so a CI run can never pass by skipping.
pub fn emulators_required() -> bool {
    std::env::var("BEMS_REQUIRE_EMULATORS").as_deref() == Ok("1")
}

/// moto's URL (`BEMS_MOTO_URL`); `None` (the caller skips or falls back)
/// only when emulators are not required.
pub fn moto_url() -> Option<String> {
    let url = std::env::var("BEMS_MOTO_URL").ok();
    assert!(url.is_some() || !emulators_required(), "BEMS_REQUIRE_EMULATORS=1 but BEMS_MOTO_URL is not set");
    url
}

/// SDK configuration for moto at `moto`.
pub async fn moto_config(moto: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(moto)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "bems-e2e"))
        .load()
        .await
}

/// A fresh idempotency table for `cell` in moto (key `eventId`, TTL on
/// `expiresAt`, on demand), and its DynamoDB client.
pub async fn idempotency_table(moto: &str, cell: &str) -> (aws_sdk_dynamodb::Client, String) {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TimeToLiveSpecification,
    };
    use bems_lambda::idempotency::attributes;
    let client = aws_sdk_dynamodb::Client::new(&moto_config(moto).await);
    let table = format!("bems-{cell}-idempotency");
    client
        .create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(attributes::KEY)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("attribute"),
        )
        .key_schema(
            KeySchemaElement::builder().attribute_name(attributes::KEY).key_type(KeyType::Hash).build().expect("key"),
        )
        .send()
        .await
        .expect("create idempotency table in moto");
    client
        .update_time_to_live()
        .table_name(&table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name(attributes::EXPIRES_AT)
                .enabled(true)
                .build()
                .expect("ttl"),
        )
        .send()
        .await
        .expect("enable TTL in moto");
    (client, table)
}

/// The rows of `table` as Timestream holds them, once at least `expected`
/// are there or `timeout` passed, and how many writes merged into rows.
///
/// moto keeps each write exactly as sent and shows them at
/// `/moto-api/data.json`; Timestream keeps one row per series, measure name
/// and time: a write of the same record again (a redelivered status change
/// written twice) changes nothing, and a write with a higher version
/// replaces the row. [`as_timestream_holds`] applies those rules.
pub async fn stored_rows(
    moto: &str,
    table: &bems_lambda::timestream::TimestreamTable,
    expected: usize,
    timeout: Duration,
) -> (Vec<Value>, Merged) {
    let started = Instant::now();
    loop {
        let (rows, merged) = as_timestream_holds(moto_writes(moto, table).await);
        if rows.len() >= expected || started.elapsed() > timeout {
            return (rows, merged);
        }
        // moto serialises its whole state per call: poll big tables slowly.
        tokio::time::sleep(Duration::from_millis(if expected > 2_000 { 5_000 } else { 500 })).await;
    }
}

/// Every write moto holds for `table`, in write order.
async fn moto_writes(moto: &str, table: &bems_lambda::timestream::TimestreamTable) -> Vec<Value> {
    let url = format!("{}/moto-api/data.json", moto.trim_end_matches('/'));
    let body: Value = tokio::task::spawn_blocking(move || {
        // moto checks each attribute serialises, then serialises them all:
        // a DynamoDB write landing in between makes the second step fail
        // with a 500 (seen with the idempotency store under load). That is
        // a race in moto's inspection endpoint, not in the data, so ask
        // again.
        let mut attempt = 0;
        let mut r = loop {
            attempt += 1;
            match ureq::get(&url).call() {
                Ok(r) => break r,
                Err(ureq::Error::StatusCode(500)) if attempt < 10 => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("moto data: {e}"),
            }
        };
        // ureq refuses bodies over 10 MB by default; 25,000 records are more.
        let text = r.body_mut().with_config().limit(u64::MAX).read_to_string().expect("moto data body");
        serde_json::from_str(&text).expect("moto data is JSON")
    })
    .await
    .expect("join");
    let tables = body["timestreamwrite"]["TimestreamTable"].as_array().cloned().unwrap_or_default();
    tables
        .iter()
        .filter(|t| t["db_name"] == table.database.as_str() && t["name"] == table.table.as_str())
        .flat_map(|t| t["records"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// Writes [`as_timestream_holds`] merged into an existing row.
#[derive(Debug, Default, Clone, Copy)]
pub struct Merged {
    /// Writes of a record exactly as stored (a redelivered status change).
    pub repeated: usize,
    /// Writes of the same measures with another version (a status change
    /// that went through the bus again: a replay).
    pub rewritten: usize,
    /// Writes of other measures with another version: a status change
    /// stored with two different contents.
    pub changed: usize,
}

/// `records` (in write order) as Timestream holds them: one row per
/// dimensions, measure name and time, the highest version winning. Two
/// writes of one row with the same version must be the same record:
/// Timestream would reject the second, so that is a bug here.
pub fn as_timestream_holds(records: Vec<Value>) -> (Vec<Value>, Merged) {
    use std::collections::btree_map::{BTreeMap, Entry};
    let key = |r: &Value| {
        let mut dimensions: Vec<String> =
            r["Dimensions"].as_array().into_iter().flatten().map(Value::to_string).collect();
        dimensions.sort();
        (dimensions, r["MeasureName"].to_string(), r["Time"].to_string())
    };
    let version = |r: &Value| r["Version"].as_i64().or_else(|| r["Version"].as_str().and_then(|v| v.parse().ok()));
    let mut rows: BTreeMap<_, Value> = BTreeMap::new();
    let mut merged = Merged::default();
    for record in records {
        match rows.entry(key(&record)) {
            Entry::Vacant(row) => {
                row.insert(record);
            }
            Entry::Occupied(mut row) => {
                if version(&record) == version(row.get()) {
                    assert_eq!(&record, row.get(), "two different records with one version: Timestream rejects one");
                    merged.repeated += 1;
                } else {
                    if record["MeasureValues"] == row.get()["MeasureValues"] {
                        merged.rewritten += 1;
                    } else {
                        merged.changed += 1;
                    }
                    if version(&record) > version(row.get()) {
                        row.insert(record);
                    }
                }
            }
        }
    }
    (rows.into_values().collect(), merged)
}

/// A dimension of a stored record.
pub fn dimension(record: &Value, name: &str) -> String {
    named(record, "Dimensions", name)
}

/// A measure of a stored multi-measure record.
pub fn measure(record: &Value, name: &str) -> String {
    named(record, "MeasureValues", name)
}

/// The `Value` of the element of `record[list]` whose `Name` is `name`.
fn named(record: &Value, list: &str, name: &str) -> String {
    record[list]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["Name"] == name)
        .and_then(|d| d["Value"].as_str())
        .unwrap_or_default()
        .to_owned()
}
