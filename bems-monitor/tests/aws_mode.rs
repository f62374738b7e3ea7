//! `bems-monitor --aws`: the dashboard over a cell that runs elsewhere.
//!
//! The "AWS" here is the emulators, reached through the standard AWS
//! configuration chain exactly as a real account would be:
//! `AWS_ENDPOINT_URL` points SQS, SNS, EventBridge and CloudWatch at
//! LocalStack, and `BEMS_TIMESTREAM_QUERY_URL` points Timestream queries at
//! moto. The cell is provisioned by the test, not by the binary, which must
//! neither run functions nor send traffic nor delete anything.
//!
//! What is and is not checked:
//! - SQS: queue depths and a dead-lettered invoice, read from LocalStack.
//! - CloudWatch: record counts put into LocalStack's CloudWatch become the
//!   per-stage error rate and the outcome table. LocalStack cannot compute
//!   percentile statistics (`p50` fails with an internal error), so the
//!   visibility panel must name that problem and the others must not.
//! - Timestream (the store here: `--store timestream`): moto answers a
//!   query only with the result registered for its exact text (it runs no
//!   SQL). The test asks the binary for its query texts
//!   (`--print-queries`: over "the last hour", the same text at every
//!   poll), registers an answer for each, and checks the dashboard shows
//!   those answers; the query texts themselves are checked by the unit
//!   tests, and what Timestream would answer is not tested. (The same
//!   panels on PostgreSQL run for real in the local cell's test.)
//!
//! Needs the emulators (`scripts/test` sets `BEMS_LOCALSTACK_URL` and
//! `BEMS_MOTO_URL`); the browser check needs `chromium`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum};
use bems_ops::provision::{Clients, ProvisionOptions};
use serde_json::{Value, json};

fn column(name: &str, scalar: &str) -> Value {
    json!({ "Name": name, "Type": { "ScalarType": scalar } })
}

fn rows(values: &[&[&str]]) -> Vec<Value> {
    values
        .iter()
        .map(|row| json!({ "Data": row.iter().map(|v| json!({ "ScalarValue": v })).collect::<Vec<_>>() }))
        .collect()
}

/// Registers `answer` as moto's result for the query text `query`.
fn moto_answer(moto: &str, query: &str, columns: Vec<Value>, rows: Vec<Value>) {
    let answer = json!({ "QueryId": "q", "ColumnInfo": Value::Array(columns), "Rows": Value::Array(rows) });
    let body = json!({ "region": "us-east-1", "results": { query: [answer] } });
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let response =
        agent.post(&format!("{moto}/moto-api/static/timestream/query-results")).send(body.to_string()).expect("moto");
    assert_eq!(response.status(), 201, "moto took the canned result");
}

fn get(url: &str) -> Value {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).build().into();
    let mut response = agent.get(url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    serde_json::from_str(&response.body_mut().read_to_string().expect("body")).expect("JSON")
}

async fn localstack_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_cloudwatch::config::Credentials::new("test", "test", None, None, "test"))
        .load()
        .await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_reads_a_deployed_cell_without_touching_it() {
    let (Ok(localstack), Ok(moto)) = (std::env::var("BEMS_LOCALSTACK_URL"), std::env::var("BEMS_MOTO_URL")) else {
        assert!(std::env::var_os("BEMS_REQUIRE_EMULATORS").is_none(), "BEMS_REQUIRE_EMULATORS=1 but no emulators");
        eprintln!("skipped: set BEMS_LOCALSTACK_URL and BEMS_MOTO_URL (scripts/test does)");
        return;
    };
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let cell = format!("la-{nanos:08x}");
    let spec = spec(&cell);
    let config = localstack_config(&localstack).await;
    let clients = Clients::new(&config);
    bems_ops::provision::provision(&clients, &spec, &ProvisionOptions::default()).await.expect("provision");

    // A dead-lettered invoice in the authorization DLQ.
    let dlq =
        bems_lambda::sqs::queue_url(&clients.sqs, &spec.dlq_name(bems_core::Stage::Authorization)).await.expect("dlq");
    let body = json!({ "invoiceId": "INV-AWS-DLQ-1", "eventId": "0a0b0c0d-0000-4000-8000-000000000001", "status": "reconciled" });
    clients
        .sqs
        .send_message()
        .queue_url(&dlq)
        .message_body(body.to_string())
        .message_group_id("INV-AWS-DLQ-1")
        .message_deduplication_id("dlq-1")
        .send()
        .await
        .expect("dead-letter one message");

    // The ingestion processor's record counts, as its EMF documents would make them.
    let cloudwatch = aws_sdk_cloudwatch::Client::new(&config);
    let at = aws_sdk_cloudwatch::primitives::DateTime::from_secs(chrono::Utc::now().timestamp() - 120);
    let datum = |metric: &str, class: Option<&str>, value: f64| {
        let mut dims = vec![
            Dimension::builder().name(bems_core::contract::CELL_DIMENSION).value(&cell).build(),
            Dimension::builder()
                .name(bems_core::contract::FUNCTION_DIMENSION)
                .value(bems_core::contract::Function::Processor(bems_core::Stage::Ingestion).metrics_name())
                .build(),
        ];
        dims.extend(class.map(|c| Dimension::builder().name(bems_core::contract::CLASS_DIMENSION).value(c).build()));
        MetricDatum::builder().metric_name(metric).set_dimensions(Some(dims)).value(value).timestamp(at).build()
    };
    cloudwatch
        .put_metric_data()
        .namespace(bems_core::contract::METRICS_NAMESPACE)
        .metric_data(datum("Processed", None, 90.0))
        .metric_data(datum("Failed", Some("transient"), 10.0))
        .send()
        .await
        .expect("put metric data");

    // Canned Timestream answers for every panel's query, and the over-SLA query.
    let binary = env!("CARGO_BIN_EXE_bems-monitor");
    let aws_args =
        ["--aws", "--cell", &cell, "--region", "us-east-1", "--account", "000000000000", "--partitions", "2"];
    let printed = Command::new(binary)
        .args(aws_args)
        .args(["--store", "timestream", "--print-queries"])
        .output()
        .expect("print queries");
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    let queries: HashMap<String, String> = serde_json::from_slice(&printed.stdout).expect("queries as JSON");
    assert_eq!(queries.len(), 6, "{queries:?}");
    let bucket = (chrono::Utc::now().timestamp() / 60 - 3) * 60 * 1000;
    let (b0, b1) = (bucket.to_string(), (bucket + 60_000).to_string());
    moto_answer(&moto, &queries["visible"], vec![column("changes", "BIGINT")], rows(&[&["300"]]));
    moto_answer(
        &moto,
        &queries["stage_counts"],
        vec![column("bucket_ms", "BIGINT"), column("stage", "VARCHAR"), column("changes", "BIGINT")],
        rows(&[&[&b0, "ingestion", "120"], &[&b0, "posting", "30"], &[&b1, "ingestion", "150"]]),
    );
    moto_answer(
        &moto,
        &queries["latencies"],
        ["stage_n", "stage_5", "stage_9", "stage_99", "e2e_n", "e2e_5", "e2e_9", "e2e_99"]
            .map(|c| column(c, "DOUBLE"))
            .to_vec(),
        rows(&[&["300", "900", "3000", "9000", "40", "41000", "70000", "98000"]]),
    );
    moto_answer(
        &moto,
        &queries["money"],
        vec![
            column("currency", "VARCHAR"),
            column("due_date", "VARCHAR"),
            column("net_days", "BIGINT"),
            column("invoices", "BIGINT"),
            column("amount", "DOUBLE"),
        ],
        rows(&[&["EUR", "2026-12-28", "30", "70", "81234.5"], &["USD", "2027-01-04", "90", "50", "60000.0"]]),
    );
    moto_answer(
        &moto,
        &queries["largest"],
        vec![
            column("invoice_id", "VARCHAR"),
            column("amount", "DOUBLE"),
            column("currency", "VARCHAR"),
            column("vendor_id", "VARCHAR"),
            column("due_date", "VARCHAR"),
        ],
        rows(&[&["INV-AWS-BIG-1", "250000.0", "GBP", "V-00042", "2027-02-01"]]),
    );
    let late = (chrono::Utc::now() - chrono::Duration::minutes(10)).format("%Y-%m-%d %H:%M:%S%.9f").to_string();
    moto_answer(
        &moto,
        &queries["open"],
        vec![
            column("invoice_id", "VARCHAR"),
            column("stage", "VARCHAR"),
            column("status", "VARCHAR"),
            column("event_id", "VARCHAR"),
            column("last_change", "TIMESTAMP"),
        ],
        rows(&[&["INV-AWS-LATE-1", "posting", "authorized", "e-late", &late]]),
    );

    // The binary, pointed at "AWS".
    let mut child = Command::new(binary)
        .args(aws_args)
        .args(["--store", "timestream", "--duration", "25", "--poll-secs", "2", "--port", "0"])
        .env("AWS_ENDPOINT_URL", &localstack)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("BEMS_TIMESTREAM_QUERY_URL", &moto)
        .env_remove("BEMS_LOCALSTACK_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start bems-monitor --aws");
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("bems-monitor: {line}");
            let _ = lines_tx.send(line);
        }
    });
    let url = loop {
        let line = lines.recv_timeout(Duration::from_secs(60)).expect("the dashboard's address");
        if let Some(rest) = line.split("dashboard on ").nth(1) {
            break rest.split_whitespace().next().expect("url").to_owned();
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let state = loop {
        let state = get(&format!("{url}api/state"));
        let ready = state["visible"].as_u64() > Some(0)
            && state["stuck"].as_array().map_or(0, Vec::len) >= 2
            && !state["stageErrors"].as_array().is_none_or(Vec::is_empty);
        if ready || Instant::now() > deadline {
            break state;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("state: {state:#}");

    assert_eq!(state["mode"], "aws");
    assert_eq!(state["sent"], 0, "no traffic without --send-traffic");
    assert_eq!(state["visible"], 300);
    assert_eq!(state["bucketSecs"], 60);
    let series = state["series"].as_array().expect("series");
    assert_eq!(series.len(), 2);
    assert_eq!((series[0]["ingestion"].as_u64(), series[0]["posting"].as_u64()), (Some(120), Some(30)));
    assert_eq!(state["endToEndMs"]["p99"], 98_000);
    assert_eq!(state["currencies"][1]["currency"], "USD");
    assert_eq!(state["currencies"][1]["invoices"], 50);
    assert_eq!(state["dueWeeks"].as_array().map(Vec::len), Some(2));
    assert_eq!(state["terms"][1]["netDays"], 90);
    assert_eq!(state["highValue"][0]["invoiceId"], "INV-AWS-BIG-1");
    assert_eq!(state["highValue"][0]["eurEquivalent"], 292_500.0);
    // CloudWatch counts: 90 processed and 10 returned for redelivery.
    let ingestion = &state["stageErrors"][0];
    assert_eq!((ingestion["stage"].as_str(), ingestion["received"].as_u64()), (Some("ingestion"), Some(100)));
    assert_eq!(ingestion["returned"], 10);
    assert_eq!(state["failures"]["Failed transient"], 10);
    // SQS: the DLQ's depth; both kinds of stuck invoice.
    let dlq_name = spec.dlq_name(bems_core::Stage::Authorization);
    assert_eq!(state["queues"][&dlq_name]["depth"], 1, "{}", state["queues"]);
    let stuck: Vec<(&str, &str)> = state["stuck"]
        .as_array()
        .expect("stuck")
        .iter()
        .map(|s| (s["invoiceId"].as_str().unwrap_or_default(), s["kind"].as_str().unwrap_or_default()))
        .collect();
    assert!(stuck.contains(&("INV-AWS-DLQ-1", "dead-lettered")), "{stuck:?}");
    assert!(stuck.contains(&("INV-AWS-LATE-1", "over-sla")), "{stuck:?}");
    // Only what LocalStack cannot do is missing, and it is named.
    let problems: Vec<&str> =
        state["problems"].as_array().expect("problems").iter().filter_map(Value::as_str).collect();
    assert!(problems.iter().all(|p| p.starts_with("CloudWatch (visibility latency)")), "{problems:?}");

    let status = child.wait().expect("bems-monitor exits");
    assert!(status.success(), "bems-monitor --aws exited with {status}");
    // Nothing was deleted: the cell is still there.
    let still = bems_lambda::sqs::queue_url(&clients.sqs, &spec.status_queue_name()).await;
    assert!(still.is_ok(), "the cell's queues must survive --aws: {still:?}");
    bems_ops::provision::teardown(&clients, &spec).await.expect("teardown");
}
