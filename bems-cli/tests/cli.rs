//! The operator commands, run as the `bems` binary against the emulators
//! and PostgreSQL: `send`, `stuck`, `redrive`, `replay` on LocalStack;
//! `store migrate|partitions|check`, `history` (and `--versions`), `stuck`'s
//! over-SLA check and `export` on the test PostgreSQL; `history` on moto's
//! Timestream and through moto's RDS Data API.
//!
//! moto's Timestream query engine does not run SQL: it answers a query
//! with the result registered for that exact query text
//! (`/moto-api/static/timestream/query-results`). The Timestream history
//! test registers an answer for the text the library builds, so it checks
//! that the binary sends exactly that text and reads the answer off the
//! wire correctly; what Timestream itself would return is not tested here.
//!
//! Run by `scripts/test` (which sets `BEMS_LOCALSTACK_URL`, `BEMS_MOTO_URL`
//! and `BEMS_POSTGRES_URL`); without them the tests say they are skipped,
//! and fail under `BEMS_REQUIRE_EMULATORS=1` / `BEMS_REQUIRE_POSTGRES=1`.

use std::path::PathBuf;
use std::process::{Command, Output};

use aws_sdk_sqs::config::Credentials;
use aws_sdk_sqs::types::MessageAttributeValue;
use serde_json::Value;

fn endpoint(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var_os("BEMS_REQUIRE_EMULATORS").is_none(),
                "BEMS_REQUIRE_EMULATORS=1 but {var} is not set"
            );
            eprintln!("skipped: set {var} (scripts/test does)");
            None
        }
    }
}

/// Runs `bems` with `args` against `endpoint`.
fn bems(endpoint: &str, args: &[&str]) -> Output {
    bems_fed(endpoint, args, "")
}

/// Runs `bems` with `args` against `endpoint`, feeding `stdin`.
fn bems_fed(endpoint: &str, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_bems"))
        .args(args)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env_remove("BEMS_CELL")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run bems");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("feed bems");
    child.wait_with_output().expect("bems ends")
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

async fn sqs(endpoint: &str) -> aws_sdk_sqs::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "bems-cli-tests"))
        .load()
        .await;
    aws_sdk_sqs::Client::new(&config)
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bems-core/fixtures").join(name)
}

/// A uniquely named cell, provisioned with the binary, torn down on drop.
struct Cell {
    endpoint: String,
    id: String,
}

impl Cell {
    fn create(endpoint: &str) -> Cell {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let id = format!("cli-{nanos:08x}");
        let out = bems(endpoint, &["provision", "--cell", &id, "--partitions", "2", "--json"]);
        assert_eq!(code(&out), 0, "provision: {}", String::from_utf8_lossy(&out.stderr));
        Cell { endpoint: endpoint.to_owned(), id }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--cell", &self.id, "--partitions", "2"]);
        bems(&self.endpoint, &all)
    }

    fn spec(&self) -> bems_core::routing::CellSpec {
        spec(&self.id)
    }
}

impl Drop for Cell {
    fn drop(&mut self) {
        let _ = bems(&self.endpoint, &["teardown", "--cell", &self.id, "--partitions", "2", "--yes"]);
    }
}

async fn url(sqs: &aws_sdk_sqs::Client, name: &str) -> String {
    sqs.get_queue_url().queue_name(name).send().await.expect("queue").queue_url().unwrap_or_default().to_owned()
}

/// Receives until `want` messages came or a few empty polls passed.
async fn receive(sqs: &aws_sdk_sqs::Client, queue: &str, want: usize) -> Vec<Value> {
    let mut got = Vec::new();
    let mut empty = 0;
    while got.len() < want && empty < 5 {
        let out = sqs.receive_message().queue_url(queue).max_number_of_messages(10).wait_time_seconds(1).send().await;
        let messages = out.expect("receive").messages().to_vec();
        if messages.is_empty() {
            empty += 1;
        }
        for m in messages {
            got.push(serde_json::from_str(m.body().unwrap_or_default()).expect("JSON body"));
            let handle = m.receipt_handle().unwrap_or_default();
            sqs.delete_message().queue_url(queue).receipt_handle(handle).send().await.expect("delete");
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_refuses_an_invalid_event_by_field_and_puts_a_valid_one_on_the_bus() {
    let Some(endpoint) = endpoint("BEMS_LOCALSTACK_URL") else { return };
    let cell = Cell::create(&endpoint);

    let invalid = fixture("invalid/many-problems-at-once.json");
    let out = cell.run(&["send", invalid.to_str().expect("path")]);
    assert_eq!(code(&out), 3, "an invalid event exits 3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nothing was sent"), "{stderr}");
    for field in ["amount", "currency"] {
        assert!(stderr.contains(&format!("  {field}: ")), "the problems name {field}: {stderr}");
    }

    let valid = fixture("example-invoice-event.json");
    let out = cell.run(&["send", valid.to_str().expect("path"), "--json"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let sent = stdout_json(&out);
    assert_eq!(sent["invoiceId"], "INV-2026-000123");
    // The reconciliation rule of its partition routed it to the route queue.
    let sqs = sqs(&endpoint).await;
    let got = receive(&sqs, &url(&sqs, &cell.spec().route_queue_name(bems_core::Stage::Reconciliation)).await, 1).await;
    assert_eq!(got.len(), 1, "the event reached the reconciliation route queue");
    assert_eq!(got[0]["detail"]["eventId"], sent["eventId"]);
    assert_eq!(got[0]["detail"]["metadata"]["cellId"], cell.id.as_str(), "placed in the cell");
}

/// Puts an event of `invoice` into the reconciliation DLQ, as the processor
/// would after a poison record.
async fn dead_letter(sqs: &aws_sdk_sqs::Client, dlq: &str, invoice: &str, seq: u32) {
    let mut event: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("example-invoice-event.json")).expect("fixture"))
            .expect("JSON");
    event["invoiceId"] = invoice.into();
    event["eventId"] = format!("0b9c6f5e-3c1f-4d8e-9a51-2f7f2c1d4e{seq:02}").into();
    sqs.send_message()
        .queue_url(dlq)
        .message_body(event.to_string())
        .message_group_id("reconciliation-p01")
        .message_deduplication_id(format!("dl-{invoice}-{seq}"))
        .message_attributes(
            bems_core::contract::REASON_ATTRIBUTE,
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value("amount: does not match the purchase order")
                .build()
                .expect("attribute"),
        )
        .send()
        .await
        .expect("send to the DLQ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_finds_dead_letters_alerts_once_and_redrive_returns_one_invoice_then_the_rest() {
    let Some(endpoint) = endpoint("BEMS_LOCALSTACK_URL") else { return };
    let cell = Cell::create(&endpoint);
    let sqs = sqs(&endpoint).await;
    let dlq = url(&sqs, &cell.spec().dlq_name(bems_core::Stage::Reconciliation)).await;
    let queue = url(&sqs, &cell.spec().queue_name(bems_core::Stage::Reconciliation)).await;
    dead_letter(&sqs, &dlq, "INV-STUCK-A", 1).await;
    dead_letter(&sqs, &dlq, "INV-STUCK-B", 2).await;

    let out = cell.run(&["stuck", "--dlq-only"]);
    assert_eq!(code(&out), 4, "stuck invoices exit 4: {}", String::from_utf8_lossy(&out.stderr));
    let out = cell.run(&["stuck", "--dlq-only", "--json"]);
    let stuck = stdout_json(&out);
    let invoices: Vec<&str> = stuck.as_array().expect("list").iter().filter_map(|s| s["invoiceId"].as_str()).collect();
    assert_eq!(invoices, ["INV-STUCK-A", "INV-STUCK-B"]);
    assert_eq!(stuck[0]["kind"], "dead-lettered");
    assert_eq!(stuck[0]["reason"], "amount: does not match the purchase order");
    assert_eq!(stuck[0]["place"], cell.spec().dlq_name(bems_core::Stage::Reconciliation));

    // Alerts: an SNS topic with a queue subscribed stands for the alert topic.
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "bems-cli-tests"))
        .load()
        .await;
    let sns = aws_sdk_sns::Client::new(&config);
    let topic = sns.create_topic().name(format!("{}-alerts", cell.id)).send().await.expect("topic");
    let topic = topic.topic_arn().expect("arn").to_owned();
    let inbox = sqs.create_queue().queue_name(format!("{}-inbox", cell.id)).send().await.expect("inbox");
    let inbox = inbox.queue_url().expect("url").to_owned();
    let inbox_arn = format!("arn:aws:sqs:us-east-1:000000000000:{}-inbox", cell.id);
    sns.subscribe().topic_arn(&topic).protocol("sqs").endpoint(&inbox_arn).send().await.expect("subscribe");
    let state = std::env::temp_dir().join(format!("{}-alerted.json", cell.id));
    let state = state.to_str().expect("path").to_owned();
    for _ in 0..2 {
        let out = cell.run(&["stuck", "--dlq-only", "--alert-topic", &topic, "--state", &state]);
        assert_eq!(code(&out), 4, "{}", String::from_utf8_lossy(&out.stderr));
    }
    let alerts = receive(&sqs, &inbox, 3).await;
    assert_eq!(alerts.len(), 2, "one alert per stuck invoice over two checks: {alerts:?}");

    // The DLQ was only looked at: both messages are still there.
    let out = cell.run(&["redrive", "--queue", "reconciliation", "--invoice", "INV-STUCK-A", "--json"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let moved = stdout_json(&out);
    assert_eq!(moved["messageIds"].as_array().map(Vec::len), Some(1), "{moved}");
    assert_eq!(moved["left"], 1);
    let back = receive(&sqs, &queue, 1).await;
    assert_eq!(back.len(), 1);
    assert_eq!(back[0]["invoiceId"], "INV-STUCK-A");

    let out = cell.run(&["redrive", "--queue", "reconciliation", "--json"]);
    assert_eq!(stdout_json(&out)["messageIds"].as_array().map(Vec::len), Some(1));
    let back = receive(&sqs, &queue, 1).await;
    assert_eq!(back[0]["invoiceId"], "INV-STUCK-B");
    let out = cell.run(&["stuck", "--dlq-only"]);
    assert_eq!(code(&out), 0, "nothing stuck any more: {}", String::from_utf8_lossy(&out.stdout));
    let _ = std::fs::remove_file(&state);

    let out = cell.run(&["redrive", "--queue", "billing"]);
    assert_eq!(code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--queue: \"billing\" is not a queue of the cell"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_on_localstack_says_it_cannot() {
    let Some(endpoint) = endpoint("BEMS_LOCALSTACK_URL") else { return };
    let out =
        bems(&endpoint, &["replay", "--cell", "any", "--from", "2026-11-26T00:00:00Z", "--to", "2026-11-26T01:00:00Z"]);
    assert_eq!(code(&out), 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("LocalStack") && stderr.contains("cannot replay"), "{stderr}");
}

/// Registers canned `results` with moto's `service` (`timestream/query-results`,
/// `rds-data/statement-results`), in its default Region and account: the
/// ones requests with the "test" key land in.
fn moto_results(moto: &str, service: &str, results: &Value) {
    let body = serde_json::json!({ "region": "us-east-1", "results": results });
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let response =
        agent.post(&format!("{moto}/moto-api/static/{service}")).send(body.to_string()).expect("moto answers");
    assert_eq!(response.status(), 201, "moto took the canned result");
}

/// Registers `answer` as moto's result for the query text `query`.
fn moto_answer(moto: &str, query: &str, answer: &Value) {
    moto_results(moto, "timestream/query-results", &serde_json::json!({ query: [answer] }));
}

fn spec(cell: &str) -> bems_core::routing::CellSpec {
    bems_core::routing::CellSpec::new(
        bems_core::fields::CellId::new(cell).expect("cell"),
        bems_core::fields::Region::new("us-east-1").expect("region"),
        bems_core::fields::AccountId::new("000000000000").expect("account"),
        bems_core::partition::PartitionCount::new(2).expect("partitions"),
    )
    .expect("spec")
}

fn column(name: &str, scalar: &str) -> Value {
    serde_json::json!({ "Name": name, "Type": { "ScalarType": scalar } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_reads_timestream_answers_off_the_wire() {
    let Some(moto) = endpoint("BEMS_MOTO_URL") else { return };
    let cell = "cli-history";
    let config = aws_sdk_timestreamquery::config::Builder::new()
        .behavior_version(aws_sdk_timestreamquery::config::BehaviorVersion::latest())
        .region(aws_sdk_timestreamquery::config::Region::new("us-east-1"))
        .build();
    let queries =
        bems_store::timestream::TimestreamQueries::new(aws_sdk_timestreamquery::Client::from_conf(config), &spec(cell));
    let query = queries.history_query("INV-HIST-1");
    let cells = |values: &[Option<&str>]| {
        let data: Vec<Value> = values
            .iter()
            .map(|v| match v {
                Some(v) => serde_json::json!({ "ScalarValue": v }),
                None => serde_json::json!({ "NullValue": true }),
            })
            .collect();
        serde_json::json!({ "Data": data })
    };
    let answer = serde_json::json!({
        "QueryId": "q-history",
        "ColumnInfo": [
            column("time", "TIMESTAMP"), column("stage", "VARCHAR"), column("status", "VARCHAR"),
            column("previous_status", "VARCHAR"), column("event_id", "VARCHAR"), column("amount", "DOUBLE"),
            column("currency", "VARCHAR"), column("due_date", "VARCHAR"), column("stage_latency_ms", "BIGINT"),
            column("end_to_end_latency_ms", "BIGINT"),
        ],
        "Rows": [
            cells(&[Some("2026-11-26 13:45:00.123000000"), Some("ingestion"), Some("submitted"), None,
                Some("e-1"), Some("99.5"), Some("EUR"), Some("2026-12-26"), None, None]),
            cells(&[Some("2026-11-26 13:45:02.000000000"), Some("reconciliation"), Some("ingested"), Some("submitted"),
                Some("e-2"), Some("99.5"), Some("EUR"), Some("2026-12-26"), Some("1877"), Some("1877")]),
        ],
    });
    moto_answer(&moto, &query, &answer);
    let store = ["--store", "timestream"];
    let args = |invoice: &'static str, json: bool| {
        let mut a = vec!["history", invoice, "--cell", cell, "--partitions", "2"];
        a.extend(store);
        if json {
            a.push("--json");
        }
        a
    };
    let out = bems(&moto, &args("INV-HIST-1", true));
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let answer = stdout_json(&out);
    assert_eq!(answer["archived"], serde_json::json!([]), "Timestream archives nothing");
    let entries = &answer["entries"];
    assert_eq!(entries.as_array().map(Vec::len), Some(2), "{entries}");
    assert_eq!(entries[0]["status"], "submitted");
    assert_eq!(entries[0]["occurredAt"], "2026-11-26T13:45:00.123Z");
    assert_eq!(entries[0]["previousStatus"], Value::Null);
    assert_eq!(entries[1]["endToEndLatencyMs"], 1877);
    // Another invoice: moto has no answer for that text, so nothing.
    let out = bems(&moto, &args("INV-HIST-2", false));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no history for INV-HIST-2"));
    // Timestream keeps no versions: said, not guessed.
    let mut versions = args("INV-HIST-1", false);
    versions.push("--versions");
    let out = bems(&moto, &versions);
    assert_eq!(code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("timestream does not keep the versions"));
}

/// `history --store data-api` through moto's RDS Data API, which runs no
/// SQL: it answers a cluster's first statement with the result registered
/// (`/moto-api/static/rds-data/statement-results`). So this checks the
/// wiring (the SDK's call, the named parameters, an answer shaped as the
/// Data API returns Aurora PostgreSQL's types, read by column type); the
/// SQL is the one every PostgreSQL test runs, and what Aurora returns is
/// untested here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_reads_the_data_api_s_answer_by_column_type() {
    let Some(moto) = endpoint("BEMS_MOTO_URL") else { return };
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let cluster = format!("arn:aws:rds:us-east-1:123456789012:cluster:bems-{nanos}");
    let text = |v: &str| serde_json::json!({ "stringValue": v });
    let none = serde_json::json!({ "isNull": true });
    let types = [
        "timestamptz",
        "text",
        "text",
        "text",
        "uuid",
        "numeric",
        "text",
        "date",
        "int8",
        "int8",
        "text",
        "timestamptz",
        "timestamptz",
    ];
    let answer = serde_json::json!({
        "records": [[
            text("2026-11-26 13:45:00.123"), text("ingestion"), text("submitted"), none.clone(),
            text("0b1e5f0e-3c3a-4f53-9a6e-0c7a0f1f2a3b"), text("1234.50"), text("EUR"), text("2026-12-26"),
            none.clone(), { "longValue": 1877 }, none,
            text("2026-11-26 13:45:01.5"), text("2026-11-26 13:45:01.9"),
        ]],
        "columnMetadata": types.iter().map(|t| serde_json::json!({ "typeName": t })).collect::<Vec<_>>(),
    });
    moto_results(&moto, "rds-data/statement-results", &serde_json::json!([answer]));
    let secret = "arn:aws:secretsmanager:us-east-1:123456789012:secret:bems-reader";
    let args = [
        "history",
        "INV-DAPI-1",
        "--cell",
        "cli-dapi",
        "--store",
        "data-api",
        "--cluster-arn",
        &cluster,
        "--secret-arn",
        secret,
        "--json",
    ];
    let out = bems(&moto, &args);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let answer = stdout_json(&out);
    let entries = &answer["entries"];
    assert_eq!(entries.as_array().map(Vec::len), Some(1), "{entries}");
    assert_eq!(entries[0]["occurredAt"], "2026-11-26T13:45:00.123Z");
    assert_eq!(entries[0]["stage"], "ingestion");
    assert_eq!(entries[0]["previousStatus"], Value::Null);
    assert_eq!(entries[0]["eventId"], "0b1e5f0e-3c3a-4f53-9a6e-0c7a0f1f2a3b");
    assert_eq!(entries[0]["amount"], "1234.50");
    assert_eq!(entries[0]["dueDate"], "2026-12-26");
    assert_eq!(
        (&entries[0]["stageLatencyMs"], &entries[0]["endToEndLatencyMs"]),
        (&Value::Null, &serde_json::json!(1877))
    );
    assert_eq!(entries[0]["storedAt"], "2026-11-26T13:45:01.900Z");
    // Without the secret, the command says what is missing.
    let out = bems(&moto, &args[..8]);
    assert_eq!(code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--secret-arn"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// moto's URL, the test PostgreSQL's, and a cell name of its own starting
/// with `prefix`; `None` (skipped) without them.
fn postgres_cell(prefix: &str) -> Option<(String, String, String)> {
    let moto = endpoint("BEMS_MOTO_URL")?;
    let Ok(url) = std::env::var("BEMS_POSTGRES_URL") else {
        assert!(
            std::env::var_os("BEMS_REQUIRE_POSTGRES").is_none(),
            "BEMS_REQUIRE_POSTGRES=1 but BEMS_POSTGRES_URL is not set"
        );
        eprintln!("skipped: set BEMS_POSTGRES_URL (scripts/test does)");
        return None;
    };
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    Some((moto, url, format!("{prefix}-{nanos:08x}")))
}

/// The store's commands against the test PostgreSQL: migrate and
/// partitions, then rows written by the writer (an invoice stalled at
/// reconciliation, with a corrected submission) read back by `history`,
/// `history --versions`, `stuck` and `export` (whose manifest's row count
/// and SHA-256 are checked against the file here), and `store check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_commands_migrate_read_check_and_export_the_postgres_store() {
    let Some((moto, url, cell)) = postgres_cell("cli-pg") else { return };
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--cell", &cell, "--partitions", "2", "--postgres-url", &url]);
        bems(&moto, &all)
    };
    // The Data API reader's password from its secret, as the template
    // makes it; a secret of another login is refused, naming it.
    let password = format!("reader-of-{cell}-0123456789");
    let secret = serde_json::json!({ "username": "bems_api_reader", "password": password }).to_string();
    let migrate =
        ["store", "migrate", "--api-reader-secret-stdin", "--cell", &cell, "--partitions", "2", "--postgres-url", &url];
    let out = bems_fed(&moto, &migrate, r#"{"username": "bems_owner", "password": "0123456789abcdefgh"}"#);
    assert_eq!(code(&out), 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(r#"username is "bems_owner""#),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = bems_fed(&moto, &migrate, &secret);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("applied [1, 2, 3]") && stdout.contains("roles: bems_writer"), "{stdout}");
    assert!(stdout.contains("bems_api_reader: password set"), "{stdout}");
    let out = run(&["store", "partitions", "--ahead", "1"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));

    // An invoice submitted half an hour ago, ingested, then stalled; its
    // submission corrected later.
    let pg = bems_ops::store::postgres(&url, &spec(&cell)).expect("store");
    let writer = bems_store::postgres::write::Writer::new(pg.clone());
    let submitted_at = chrono::Utc::now() - chrono::Duration::minutes(30);
    let mut event =
        bems_core::InvoiceEvent::from_json(&std::fs::read(fixture("example-invoice-event.json")).expect("fixture"))
            .expect("event");
    event.invoice_id = bems_core::fields::InvoiceId::new("INV-CLI-1").expect("id");
    event.stage = bems_core::Stage::Ingestion;
    event.status = bems_core::Status::Submitted;
    event.previous_status = None;
    event.occurred_at = submitted_at;
    let first = bems_store::StatusRow::new(&event, submitted_at + chrono::Duration::seconds(1));
    event.stage = bems_core::Stage::Reconciliation;
    event.status = bems_core::Status::Ingested;
    event.previous_status = Some(bems_core::Status::Submitted);
    event.previous_occurred_at = Some(submitted_at);
    event.submitted_at = Some(submitted_at);
    event.occurred_at = submitted_at + chrono::Duration::seconds(20);
    event.event_id = bems_core::fields::EventId::random();
    let second = bems_store::StatusRow::new(&event, event.occurred_at + chrono::Duration::seconds(1));
    let mut corrected = first.clone();
    corrected.version += chrono::Duration::minutes(5);
    corrected.amount = "1200.00".parse().expect("amount");
    for batch in [vec![first, second], vec![corrected]] {
        let outcomes = writer.write(&batch).await.expect("write");
        assert!(outcomes.iter().all(bems_store::postgres::write::RowOutcome::is_done), "{outcomes:?}");
    }

    let out = run(&["history", "INV-CLI-1", "--json"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let answer = stdout_json(&out);
    let history = &answer["entries"];
    assert_eq!(history.as_array().map(Vec::len), Some(2), "{history}");
    assert_eq!(answer["archived"], serde_json::json!([]));
    assert_eq!((history[0]["status"].as_str(), history[0]["amount"].as_str()), (Some("submitted"), Some("1200.00")));
    let out = run(&["history", "INV-CLI-1", "--versions", "--json"]);
    let versions = stdout_json(&out)["entries"].clone();
    let amounts: Vec<&str> = versions.as_array().expect("list").iter().filter_map(|v| v["amount"].as_str()).collect();
    assert_eq!(amounts, ["1250.50", "1200.00", "1250.50"], "both versions of the submission, then the change");

    let out = run(&["stuck", "--json"]);
    assert_eq!(code(&out), 4, "{}", String::from_utf8_lossy(&out.stderr));
    let stuck = stdout_json(&out);
    assert_eq!(stuck.as_array().map(Vec::len), Some(1), "{stuck}");
    assert_eq!((stuck[0]["invoiceId"].as_str(), stuck[0]["kind"].as_str()), (Some("INV-CLI-1"), Some("over-sla")));
    assert_eq!(stuck[0]["place"], "reconciliation");

    let out = run(&["store", "check"]);
    assert_eq!(code(&out), 0, "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

    // The Data API reader logs in with the secret's password and may only read.
    let (_, at_host) = url.split_once('@').expect("a URL with a login");
    let reader_url = format!("postgres://bems_api_reader:{password}@{at_host}");
    let reader =
        bems_ops::store::postgres(&reader_url, &spec(&cell)).expect("reader").connect().await.expect("reader logs in");
    let n: i64 =
        reader.query_one(&format!("SELECT count(*) FROM {}.invoices", pg.schema()), &[]).await.expect("select").get(0);
    assert_eq!(n, 1);
    let refused =
        reader.batch_execute(&format!("DELETE FROM {}.invoices", pg.schema())).await.expect_err("reader deletes");
    assert_eq!(refused.code().map(|c| c.code()), Some("42501"));

    let dir = std::env::temp_dir().join(&cell);
    std::fs::create_dir_all(&dir).expect("dir");
    let from = (submitted_at - chrono::Duration::minutes(1)).to_rfc3339();
    let to = chrono::Utc::now().to_rfc3339();
    for format in ["csv", "jsonl"] {
        let file = dir.join(format!("export.{format}"));
        let path = file.to_str().expect("path");
        let out = run(&["export", "--from", &from, "--to", &to, "--format", format, "--out", path]);
        assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
        let bytes = std::fs::read(&file).expect("export");
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(format!("{path}.manifest.json")).expect("manifest")).expect("JSON");
        use sha2::Digest;
        let digest: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(manifest["sha256"], digest.as_str(), "{format}: the manifest's hash is the file's");
        assert_eq!(manifest["rows"], 2);
        let lines: Vec<&str> = std::str::from_utf8(&bytes).expect("UTF-8").lines().collect();
        match format {
            "csv" => {
                assert_eq!(lines.len(), 3, "a header and two rows");
                assert!(lines[0].starts_with("occurred_at,invoice_id,stage,status"), "{}", lines[0]);
                assert!(lines[1].contains(",1200.00,EUR,"), "{}", lines[1]);
            }
            _ => {
                let first: Value = serde_json::from_str(lines[0]).expect("a JSON line");
                assert_eq!(lines.len(), 2);
                assert_eq!(first["invoice_id"], "INV-CLI-1");
                assert!(lines[0].contains("\"amount\":1200.00,"), "the amount exact, scale kept: {}", lines[0]);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let client = pg.connect().await.expect("connect");
    client.batch_execute(&format!("DROP SCHEMA {} CASCADE", pg.schema())).await.expect("drop");
}

/// `store archive` to moto's S3: the months older than three go to gzipped
/// files (one sent in parts), whose bytes are the manifests' and hold every
/// row; the partitions go; `history` says where the invoice's rows are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_archive_moves_old_months_to_s3_and_history_says_where() {
    let Some((moto, url, cell)) = postgres_cell("cli-arc") else { return };
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--cell", &cell, "--partitions", "2", "--postgres-url", &url]);
        bems(&moto, &all)
    };
    assert_eq!(code(&run(&["store", "migrate", "--no-roles"])), 0);
    let pg = bems_ops::store::postgres(&url, &spec(&cell)).expect("store");
    let mut client = pg.connect().await.expect("connect");
    let now = chrono::Utc::now();
    bems_store::postgres::partitions::ensure(&mut client, pg.schema(), now - chrono::Duration::days(160), 6)
        .await
        .expect("partitions");

    // Five months ago, enough changes to send in parts (JSON lines,
    // uncompressed: about 10 MiB, three 5 MiB parts); four months ago, one.
    let months: Vec<chrono::NaiveDate> = [5, 4]
        .map(|n| {
            bems_store::postgres::partitions::month_of(now).checked_sub_months(chrono::Months::new(n)).expect("month")
        })
        .to_vec();
    let event =
        bems_core::InvoiceEvent::from_json(&std::fs::read(fixture("example-invoice-event.json")).expect("fixture"))
            .expect("event");
    let writer = bems_store::postgres::write::Writer::new(pg.clone());
    let change = |invoice: String, month: chrono::NaiveDate, second: i64| {
        let mut e = event.clone();
        e.invoice_id = bems_core::fields::InvoiceId::new(invoice).expect("id");
        e.event_id = bems_core::fields::EventId::random();
        e.occurred_at = chrono::TimeZone::from_utc_datetime(&chrono::Utc, &month.and_hms_opt(0, 0, 0).expect("time"))
            + chrono::Duration::days(2)
            + chrono::Duration::seconds(second);
        bems_store::StatusRow::new(&e, e.occurred_at + chrono::Duration::seconds(1))
    };
    let rows: Vec<bems_store::StatusRow> = (0..14_000).map(|i| change(format!("INV-ARC-{i}"), months[0], i)).collect();
    for batch in rows.chunks(1_000) {
        writer.write(batch).await.expect("write");
    }
    writer.write(&[change("INV-ARC-GZ".to_owned(), months[1], 0)]).await.expect("write");

    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&moto)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new("test", "test", None, None, "bems-cli-tests"))
        .load()
        .await;
    let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&config).force_path_style(true).build());
    let bucket = cell.clone();
    s3.create_bucket().bucket(&bucket).send().await.expect("bucket");
    // Versioned, as the template's bucket is: a write's receipt is its version id.
    let versioning = aws_sdk_s3::types::VersioningConfiguration::builder()
        .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled);
    s3.put_bucket_versioning()
        .bucket(&bucket)
        .versioning_configuration(versioning.build())
        .send()
        .await
        .expect("versioning");
    let to = format!("s3://{bucket}/archive");

    let out = run(&["store", "archive", "--to", &to, "--dry-run", "--json"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let planned = stdout_json(&out);
    assert!(
        months.iter().all(|m| planned.as_array().is_some_and(|p| p.contains(&Value::from(m.to_string())))),
        "{planned}"
    );

    // The older month in parts, uncompressed; then the other, gzipped in one piece.
    let runs: [(&[&str], chrono::NaiveDate, u64); 2] = [
        (
            &["--keep-months", "5", "--format", "jsonl", "--compression", "none", "--part-size-mib", "5"],
            months[0],
            14_000,
        ),
        (&["--keep-months", "3"], months[1], 1),
    ];
    for (options, month, rows) in runs {
        let mut args = vec!["store", "archive", "--to", &to, "--json"];
        args.extend(options);
        let out = run(&args);
        assert_eq!(code(&out), 0, "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let done = stdout_json(&out);
        let this = done.as_array().expect("months").iter().find(|m| m["month"] == month.to_string());
        for file in this.expect("the month")["files"].as_array().expect("files") {
            let get = |location: &str| {
                let key = location.strip_prefix(&format!("s3://{bucket}/")).expect("in the bucket").to_owned();
                let s3 = s3.clone();
                let bucket = bucket.clone();
                async move {
                    let object = s3.get_object().bucket(bucket).key(key).send().await.expect("object");
                    object.body.collect().await.expect("body").into_bytes()
                }
            };
            let location = file["location"].as_str().expect("location");
            let bytes = get(location).await;
            if rows > 1 {
                // Sent in parts: a multipart object's ETag ends in "-<parts>".
                let key = location.strip_prefix(&format!("s3://{bucket}/")).expect("in the bucket");
                let head = s3.head_object().bucket(&bucket).key(key).send().await.expect("head");
                assert!(
                    head.e_tag().is_some_and(|t| t.trim_matches('"').ends_with("-2")),
                    "{location}: {:?}",
                    head.e_tag()
                );
            }
            use sha2::Digest;
            let digest: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(file["sha256"], digest.as_str(), "{location}: the recorded hash is the object's");
            assert_eq!(file["bytes"], bytes.len());
            let text = if location.ends_with(".gz") {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut text).expect("gzip");
                text.lines().skip(1).map(|l| format!("{l}\n")).collect()
            } else {
                String::from_utf8(bytes.to_vec()).expect("UTF-8")
            };
            assert_eq!(text.lines().count() as u64, rows, "{location}: every row");
            let manifest: Value =
                serde_json::from_slice(&get(file["manifest"].as_str().expect("manifest")).await).expect("JSON");
            assert_eq!((manifest["rows"].as_u64(), &manifest["sha256"]), (Some(rows), &file["sha256"]));
        }
        let parts: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename LIKE $2",
                &[&pg.schema().to_string(), &format!("%{}", month.format("_%Y_%m"))],
            )
            .await
            .expect("partitions")
            .get(0);
        assert_eq!(parts, 0, "{month}: the partitions are dropped");
    }

    let out = run(&["history", "INV-ARC-7"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let month = months[0].format("%Y-%m");
    let expected = format!("{month}: archived at {to}/{}/status_changes/month={month}/", pg.schema());
    assert!(stdout.contains(&expected), "{stdout}");
    assert!(!stdout.contains("no history"), "{stdout}");
    // A bad target is named.
    let out = run(&["store", "archive", "--to", "s3://"]);
    assert_eq!(code(&out), 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expected s3://bucket"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    client.batch_execute(&format!("DROP SCHEMA {} CASCADE", pg.schema())).await.expect("drop");
}

/// `bems smoke` finds the cell's API and key by name, sends its invoice
/// through the API and follows it in the store (moto's Timestream, through
/// its own API);
/// on a provisioned cell with no functions running the invoice is routed
/// into the ingestion route queue and no further, and the binary says so,
/// names the queue it waits in, and exits 5.
#[tokio::test]
async fn smoke_says_where_the_invoice_stopped() {
    let (Some(localstack), Some(moto)) = (endpoint("BEMS_LOCALSTACK_URL"), endpoint("BEMS_MOTO_URL")) else { return };
    let cell = Cell::create(&localstack);
    let out = cell.run(&["smoke", "--moto-store", &moto, "--timeout", "4"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 5, "{text}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("HTTP 200"), "the API accepted it: {text}");
    assert!(text.contains("STOPPED at routing"), "{text}");
    let route = cell.spec().route_queue_name(bems_core::Stage::Ingestion);
    assert!(text.contains(&format!("{route}: 1 waiting")), "the invoice waits in {route}: {text}");

    let out = cell.run(&["smoke", "--moto-store", &moto, "--timeout", "2", "--json"]);
    let report = stdout_json(&out);
    assert_eq!(code(&out), 5);
    assert!(report["invoiceId"].as_str().is_some_and(|i| i.starts_with("BEMS-SMOKE-")), "{report}");
    assert_eq!(report["stopped"]["at"], "routing");
    assert_eq!(report["checkpoints"].as_array().map(Vec::len), Some(5));

    // A wrong key: the API refuses it, and the report stops at the API.
    let out = cell.run(&["smoke", "--moto-store", &moto, "--api-key", "not-a-key", "--timeout", "2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 5, "{text}");
    assert!(text.contains("STOPPED at api: the API answered 403"), "{text}");
}
