//! The HTTP ingress on LocalStack: API key, request validation with the
//! bems-schema models, and the integration that puts events on the bus.

use std::time::Duration;

use bems_cli::provision::ProvisionOptions;
use bems_core::{Stage, Status};
use bems_e2e::{Cell, environment, event};
use serde_json::Value;

/// POSTs `body` to the stage's endpoint; returns (status, JSON body).
fn post(cell: &Cell, stage: Stage, key: Option<&str>, body: &str) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let mut request = agent.post(&cell.url(stage)).header("Content-Type", "application/json");
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let mut response = request.send(body.as_bytes()).unwrap_or_else(|e| panic!("POST to LocalStack: {e}"));
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
async fn a_schema_invalid_body_gets_400_with_the_failing_fields_and_nothing_reaches_the_bus() {
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
    if cell.env.localstack.is_none() {
        let errors = answer["errors"].as_str().unwrap_or_default();
        assert!(errors.contains("currency") || errors.contains("EURO"), "names the field: {answer}");
    }
    // On AWS the body lists the failing fields through the BAD_REQUEST_BODY
    // gateway response ($context.error.validationErrorString). LocalStack
    // 2026.3 stores gateway responses but does not apply their templates and
    // leaves validationErrorString empty (TODOs in its execute_api
    // handlers), so here the test checks what was deployed instead.
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
    assert!(template.contains("$context.error.validationErrorString"), "{template}");

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
