//! The HTTP ingress on LocalStack: API key, request validation with the
//! bems-schema models, and the integration that puts events on the bus.

use std::time::Duration;

use bems_core::{Stage, Status};
use bems_e2e::{Cell, environment, event};
use bems_ops::provision::ProvisionOptions;
use serde_json::Value;

/// POSTs `body` to the stage's endpoint; returns (status, JSON body).
fn post(cell: &Cell, stage: Stage, key: Option<&str>, body: &str) -> (u16, Value) {
    post_bytes(cell, stage, key, body.as_bytes())
}

/// POSTs raw bytes (which need not be UTF-8).
fn post_bytes(cell: &Cell, stage: Stage, key: Option<&str>, body: &[u8]) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let mut request = agent.post(&cell.url(stage)).header("Content-Type", "application/json");
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let mut response = request.send(body).unwrap_or_else(|e| panic!("POST to LocalStack: {e}"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn nothing_arrives(cell: &Cell) {
    for queue in Stage::ALL.map(|s| cell.spec.queue_name(s)).into_iter().chain([cell.spec.status_queue_name()]) {
        let got = cell.drain(&queue, 0, Duration::from_secs(2)).await;
        assert!(got.is_empty(), "{queue} received {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_event_posted_with_a_key_reaches_its_stage_queue() {
    let Some(env) = environment().await else { return };
    let cell = Cell::create(&env, 4, ProvisionOptions::default()).await;
    let mut e = event("INV-API-1", Stage::Ingestion, Status::Submitted, None, 0);
    cell.publisher().place(&mut e);
    // A vendor name with an apostrophe: the mapping template must keep the JSON valid.
    e.vendor.name = bems_core::fields::VendorName::new("O'Brien & Söhne").expect("name");
    let (status, body) = post(&cell, Stage::Ingestion, Some(&cell.ingress.api_key), &e.to_json());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["failedEntryCount"], 0, "{body}");
    let got = cell.drain(&cell.spec.queue_name(Stage::Ingestion), 1, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["detail"]["eventId"], e.event_id.to_string());
    assert_eq!(got[0]["detail"]["vendor"]["name"], "O'Brien & Söhne");
    for other in [Stage::Reconciliation, Stage::Authorization, Stage::Posting] {
        assert!(cell.drain(&cell.spec.queue_name(other), 0, Duration::from_secs(1)).await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_invalid_body_gets_400_in_json_and_nothing_reaches_the_bus() {
    let Some(env) = environment().await else { return };
    let cell = Cell::create(&env, 2, ProvisionOptions::default()).await;
    let mut e = event("INV-API-2", Stage::Ingestion, Status::Submitted, None, 0);
    cell.publisher().place(&mut e);
    let mut body: Value = serde_json::from_str(&e.to_json()).expect("json");
    body["currency"] = "EURO".into();
    body["amount"] = "12.50".into();
    let (status, answer) = post(&cell, Stage::Ingestion, Some(&cell.ingress.api_key), &body.to_string());
    assert_eq!(status, 400, "{answer}");
    assert!(answer["message"].is_string(), "a JSON error body: {answer}");
    // On AWS the body is the BAD_REQUEST_BODY gateway response: API
    // Gateway's message and a hint, never the validation message, which
    // would break the JSON (see bems_template::api::GATEWAY_RESPONSES).
    // LocalStack 2026.3 stores gateway responses but does not apply their
    // templates (TODOs in its execute_api handlers), so here the test
    // checks what was deployed instead.
    let deployed = cell
        .clients
        .apigateway
        .get_gateway_response()
        .rest_api_id(&cell.ingress.rest_api_id)
        .response_type(aws_sdk_apigateway::types::GatewayResponseType::BadRequestBody)
        .send()
        .await
        .expect("gateway response");
    assert_eq!(deployed.status_code(), Some("400"));
    let template = deployed.response_templates().and_then(|t| t.get("application/json")).cloned().unwrap_or_default();
    assert!(template.contains("$context.error.messageString"), "{template}");
    assert!(!template.contains("validationErrorString"), "{template}");

    // The right stage in the body, but posted to another stage's endpoint.
    let (status, answer) = post(&cell, Stage::Posting, Some(&cell.ingress.api_key), &e.to_json());
    assert_eq!(status, 400, "{answer}");
    nothing_arrives(&cell).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_key_gets_403_and_nothing_reaches_the_bus() {
    let Some(env) = environment().await else { return };
    let cell = Cell::create(&env, 2, ProvisionOptions::default()).await;
    let mut e = event("INV-API-3", Stage::Ingestion, Status::Submitted, None, 0);
    cell.publisher().place(&mut e);
    let (status, answer) = post(&cell, Stage::Ingestion, None, &e.to_json());
    assert_eq!(status, 403, "{answer}");
    assert!(answer["message"].is_string(), "a JSON error body: {answer}");
    let (status, answer) = post(&cell, Stage::Ingestion, Some("not-a-key"), &e.to_json());
    assert_eq!(status, 403, "{answer}");
    nothing_arrives(&cell).await;
}

/// A corpus of malformed requests, each with the status API Gateway gives
/// it: 400 from the request validator (the bems-schema model) for bodies
/// that are not a valid event, 403 for a missing or wrong key. Every answer
/// must be a JSON error with a message, and nothing may reach the bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corpus_of_malformed_requests_gets_4xx_each_and_nothing_reaches_the_bus() {
    let Some(env) = environment().await else { return };
    let cell = Cell::create(&env, 2, ProvisionOptions::default()).await;
    let mut e = event("INV-API-4", Stage::Ingestion, Status::Submitted, None, 0);
    cell.publisher().place(&mut e);
    let valid: Value = serde_json::from_str(&e.to_json()).expect("json");
    let with = |path: &[&str], value: Value| {
        let mut body = valid.clone();
        let mut at = &mut body;
        for key in &path[..path.len() - 1] {
            at = &mut at[*key];
        }
        at[path[path.len() - 1]] = value;
        body.to_string().into_bytes()
    };
    let without = |field: &str| {
        let mut body = valid.clone();
        body.as_object_mut().expect("object").remove(field);
        body.to_string().into_bytes()
    };
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    // Built as text: serde_json would refuse to parse it back (depth 128).
    let nested_vendor =
        String::from_utf8(with(&["vendor"], "DEEP".into())).expect("utf-8").replace("\"DEEP\"", &deep).into_bytes();
    let mut invalid_utf8 = valid.to_string().into_bytes();
    let at = invalid_utf8.windows(9).position(|w| w == b"INV-API-4").expect("invoice id in the body");
    invalid_utf8[at + 4] = 0xC3; // a lone UTF-8 lead byte
    invalid_utf8[at + 5] = 0x28;
    let key = Some(cell.ingress.api_key.as_str());
    // LocalStack 2026.3's API Gateway fails where AWS's answers 400: Python
    // errors out on nesting beyond its recursion limit and on bytes that are
    // not UTF-8, and answers 500 with the Python error. On LocalStack those
    // cases accept exactly that 500 (and still nothing may reach the bus).
    const DEPTH: &str = "maximum recursion depth exceeded";
    const UTF8: &str = "codec can't decode";
    // (what, API key, body, the statuses AWS gives, LocalStack's 500 if it fails instead)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, &'a [u16], Option<&'a str>);
    let cases: Vec<Case<'_>> = vec![
        ("amount as a string", key, with(&["amount"], "12.50".into()), &[400], None),
        ("netDays as a string", key, with(&["paymentTerms", "netDays"], "30".into()), &[400], None),
        ("vendor as an array", key, with(&["vendor"], serde_json::json!([1, 2])), &[400], None),
        ("status as a number", key, with(&["status"], 7.into()), &[400], None),
        ("a 1 MB invoice id", key, with(&["invoiceId"], "I".repeat(1 << 20).into()), &[400], None),
        ("a 100 KB vendor name", key, with(&["vendor", "name"], "N".repeat(100_000).into()), &[400], None),
        ("vendor nested 10,000 deep", key, nested_vendor, &[400], Some(DEPTH)),
        ("a body nested 10,000 deep", key, deep.clone().into_bytes(), &[400], Some(DEPTH)),
        ("invalid UTF-8", key, invalid_utf8, &[400], Some(UTF8)),
        ("eventId missing", key, without("eventId"), &[400], None),
        ("an unknown field", key, with(&["discount"], 5.into()), &[400], None),
        ("not JSON", key, b"invoice=INV-1&amount=5".to_vec(), &[400], None),
        ("an empty body", key, Vec::new(), &[400], None),
        // API Gateway's payload limit is 10 MB: AWS answers 413, LocalStack validates it (400).
        ("a 10 MB body", key, with(&["vendor", "name"], "N".repeat(10 * 1024 * 1024).into()), &[400, 413], None),
        ("no API key", None, e.to_json().into_bytes(), &[403], None),
        ("a wrong API key", Some("not-a-key"), e.to_json().into_bytes(), &[403], None),
    ];
    let mut wrong = Vec::new();
    for (name, key, body, expected, localstack_gap) in &cases {
        let (status, answer) = post_bytes(&cell, Stage::Ingestion, *key, body);
        let message = answer["message"].as_str().or(answer.as_str()).unwrap_or_default();
        println!("{name}: {status} {}", message.chars().take(120).collect::<String>());
        let emulator_gap = status == 500 && localstack_gap.is_some_and(|gap| message.contains(gap));
        if (!expected.contains(&status) && !emulator_gap) || message.is_empty() {
            wrong.push(format!("{name}: got {status} {answer:.200}, want {expected:?} with a message"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    nothing_arrives(&cell).await;
}
