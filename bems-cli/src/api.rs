//! The HTTP ingress: an API Gateway REST API that validates invoice events
//! and puts them on the cell's bus, provisioned idempotently.
//!
//! `POST /invoices/{ingestion,reconciliation,authorization,posting}`, each
//! with:
//!
//! - the stage's request model from `bems-schema` (draft-04) and a request
//!   validator, so a malformed body gets 400 before anything reaches the bus;
//! - an API key (usage plan with throttling sized for month-end: 1,000
//!   requests/s steady, bursts of 2,000, i.e. the 60,000 events per minute
//!   of the design with room to spare);
//! - an AWS integration calling EventBridge `PutEvents` with the body as the
//!   event's detail;
//! - integration responses that answer 2xx only when the bus took the
//!   event, and 429, 502 or 503 when it did not ([`INTEGRATION_RESPONSES`]);
//! - gateway responses that answer in JSON: 400 for a body the stage's
//!   model refuses (an invalid event, or one this cell would not route),
//!   403 without a valid key, 429 when throttled ([`GATEWAY_RESPONSES`]).
//!
//! Emulator differences, used only with `emulator: true`:
//! - LocalStack validates models with Python's `jsonschema`, whose float
//!   `multipleOf` refuses amounts such as `19.99` (19.99 / 0.01 is not an
//!   integer in binary floating point). The models deployed to LocalStack
//!   leave out the per-currency `multipleOf`; decimals are still checked by
//!   the Rust validator in the SDK and the processors.
//! - AWS's `$util.escapeJavaScript` escapes `'` as `\'`, which is not JSON,
//!   so the AWS template undoes it with `.replaceAll("\\'","'")`; LocalStack
//!   escapes JSON-correctly and has no `replaceAll` on that value.

use std::collections::HashMap;

use aws_sdk_apigateway::types::{GatewayResponseType, IntegrationType, Op, PatchOperation};
use aws_sdk_eventbridge::error::ProvideErrorMetadata;
use bems_core::Stage;
use bems_core::routing::CellSpec;
use serde_json::Value;

use crate::provision::{Change, ProvisionError, Report};

/// The deployed stage name.
pub const STAGE_NAME: &str = "v1";

/// Steady requests per second the usage plan and stage allow.
pub const RATE_LIMIT: f64 = 1000.0;

/// Burst the usage plan and stage allow.
pub const BURST_LIMIT: i32 = 2000;

/// What callers need to use the API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ingress {
    /// The REST API id.
    pub rest_api_id: String,
    /// The producers' API key (send it as `x-api-key`).
    pub api_key: String,
}

impl Ingress {
    /// The URL of `POST /invoices/<stage>` on LocalStack at `endpoint`.
    pub fn localstack_url(&self, endpoint: &str, stage: Stage) -> String {
        format!(
            "{}/restapis/{}/{STAGE_NAME}/_user_request_/invoices/{stage}",
            endpoint.trim_end_matches('/'),
            self.rest_api_id
        )
    }

    /// The URL of `POST /invoices/<stage>` on AWS.
    pub fn aws_url(&self, region: &str, stage: Stage) -> String {
        format!("https://{}.execute-api.{region}.amazonaws.com/{STAGE_NAME}/invoices/{stage}", self.rest_api_id)
    }
}

/// The REST API's name: `bems-<cell>-ingress`.
pub fn api_name(spec: &CellSpec) -> String {
    format!("bems-{}-ingress", spec.cell_id())
}

/// The producers' API key and usage plan's name: `bems-<cell>-producers`.
pub fn producers_name(spec: &CellSpec) -> String {
    format!("bems-{}-producers", spec.cell_id())
}

/// The id of `spec`'s REST API, found by its name.
pub async fn find_api(client: &aws_sdk_apigateway::Client, spec: &CellSpec) -> Result<String, ProvisionError> {
    let name = api_name(spec);
    rest_api_id(client, &name)
        .await?
        .ok_or_else(|| ProvisionError { step: "find the API".into(), message: format!("no REST API named {name}") })
}

/// The value of `spec`'s producers' key, found by its name (reading it
/// needs `apigateway:GET` on the key).
pub async fn find_key(client: &aws_sdk_apigateway::Client, spec: &CellSpec) -> Result<String, ProvisionError> {
    let name = producers_name(spec);
    let (_, value) = producers_key(client, &name)
        .await?
        .ok_or_else(|| ProvisionError { step: "find the key".into(), message: format!("no API key named {name}") })?;
    Ok(value)
}

/// The id of the REST API named `name`, if there is one.
async fn rest_api_id(client: &aws_sdk_apigateway::Client, name: &str) -> Result<Option<String>, ProvisionError> {
    let apis = client.get_rest_apis().limit(500).send().await.map_err(|e| fail("list APIs", &e))?;
    Ok(apis.items().iter().find(|a| a.name() == Some(name)).and_then(|a| a.id()).map(str::to_owned))
}

/// The id and value of the API key named `name`, if there is one.
async fn producers_key(
    client: &aws_sdk_apigateway::Client,
    name: &str,
) -> Result<Option<(String, String)>, ProvisionError> {
    let keys =
        client.get_api_keys().name_query(name).include_values(true).send().await.map_err(|e| fail("list keys", &e))?;
    Ok(keys
        .items()
        .iter()
        .find(|k| k.name() == Some(name))
        .map(|k| (k.id().unwrap_or_default().to_owned(), k.value().unwrap_or_default().to_owned())))
}

fn fail(
    step: impl Into<String>,
    e: &(impl aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static),
) -> ProvisionError {
    ProvisionError { step: step.into(), message: crate::describe(e) }
}

fn not_found<E: ProvideErrorMetadata>(e: &E) -> bool {
    e.code().is_some_and(|c| c.contains("NotFound"))
}

/// The model name of a stage: `InvoiceIngestionRequest`.
pub fn model_name(stage: Stage) -> String {
    let s = stage.as_str();
    format!("Invoice{}{}Request", s[..1].to_uppercase(), &s[1..])
}

/// The request mapping template: one `PutEvents` entry whose detail is the
/// body, as text.
pub fn request_template(spec: &CellSpec, emulator: bool) -> String {
    let detail = if emulator {
        "$util.escapeJavaScript($input.body)".to_owned()
    } else {
        r#"$util.escapeJavaScript($input.body).replaceAll("\\'","'")"#.to_owned()
    };
    format!(
        r#"{{"Entries":[{{"Source":"{}","DetailType":"{}","EventBusName":"{}","Detail":"{detail}"}}]}}"#,
        bems_core::envelope::EVENT_SOURCE,
        bems_core::envelope::DETAIL_TYPE,
        spec.bus_name()
    )
}

/// The gateway's own answers, in JSON: (response type, status, body).
///
/// Gateway response templates are not VTL: API Gateway substitutes
/// `$context` values as they are, with no escaping function, so a body
/// holds only values that stay valid JSON: `$context.error.messageString`
/// is the message already quoted (and API Gateway's messages hold no
/// quote). The detailed `$context.error.validationErrorString` quotes the
/// values it names, which would break the JSON, so the 400 body says where
/// to find every problem instead.
pub const GATEWAY_RESPONSES: &[(&str, &str, &str)] = &[
    (
        "BAD_REQUEST_BODY",
        "400",
        r#"{"message": $context.error.messageString, "hint": "the body is not a valid invoice event for this stage and cell (the stage's model is bems-schema's <stage>-request.v1.json, with metadata.partition at most the cell's partition count and metadata.cellId, region and accountId the cell's); bems_core::Validator, or `bems send`, lists every problem"}"#,
    ),
    (
        "MISSING_AUTHENTICATION_TOKEN",
        "403",
        r#"{"message": "no such endpoint, or no API key; send the key as x-api-key"}"#,
    ),
    ("INVALID_API_KEY", "403", r#"{"message": "the API key is not valid for this API"}"#),
    ("THROTTLED", "429", r#"{"message": "too many requests; retry with backoff"}"#),
    ("QUOTA_EXCEEDED", "429", r#"{"message": "the usage plan's quota is exhausted"}"#),
];

/// The statuses a method answers with: success, the gateway's own
/// refusals, and what the bus's answer is mapped to
/// ([`INTEGRATION_RESPONSES`]).
pub const METHOD_STATUSES: [&str; 7] = ["200", "400", "403", "429", "500", "502", "503"];

/// One integration response: which answers of the bus it takes (a regular
/// expression over the bus's HTTP status; `None`: every answer no other
/// takes), the method status it answers with unless the template overrides
/// it, and the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntegrationResponse {
    /// The `SelectionPattern`.
    pub selection_pattern: Option<&'static str>,
    /// The `StatusCode`.
    pub status: &'static str,
    /// The `application/json` response template.
    pub template: &'static str,
}

/// How the bus's answers become the API's. PutEvents answers 200 even when
/// it refuses the entry (`FailedEntryCount` 1 and the entry's `ErrorCode`),
/// and 4xx for a throttled or refused call (`__type` names the error), so
/// each template reads the answer and sets
/// `$context.responseOverride.status` once where the default status is
/// wrong: never 2xx for an event the bus did not take. Throttling becomes
/// 429 (retry with backoff), the bus's internal failures 503 (retry),
/// everything else 502 (the cell's configuration, not the producer's
/// event, is at fault: access denied, a missing bus). Every body is JSON:
/// the only value copied from the answer goes through `$input.json`, which
/// writes it as JSON.
pub const INTEGRATION_RESPONSES: [IntegrationResponse; 3] = [
    IntegrationResponse {
        selection_pattern: None,
        status: "200",
        template: r#"#set($failed = "$input.path('$.FailedEntryCount')")
#if($failed == "0")
{"failedEntryCount": 0, "entries": $input.json('$.Entries')}
#else
#set($code = "$input.path('$.Entries[0].ErrorCode')")
#if($code == "ThrottlingException")
#set($context.responseOverride.status = 429)
#elseif($code == "InternalFailure")
#set($context.responseOverride.status = 503)
#else
#set($context.responseOverride.status = 502)
#end
{"message": "the event bus did not take the event; it was not accepted", "errorCode": $input.json('$.Entries[0].ErrorCode')}
#end"#,
    },
    IntegrationResponse {
        selection_pattern: Some("4\\d{2}"),
        status: "502",
        template: r#"#set($type = $input.body)
#if($type.contains("ThrottlingException"))
#set($context.responseOverride.status = 429)
{"message": "the event bus is throttling; retry with backoff", "errorCode": "ThrottlingException"}
#elseif($type.contains("AccessDeniedException"))
{"message": "the ingress may not put events on the bus; the event was not accepted", "errorCode": "AccessDeniedException"}
#else
{"message": "the event bus refused the request; the event was not accepted", "errorCode": "BusRefused"}
#end"#,
    },
    IntegrationResponse {
        selection_pattern: Some("5\\d{2}"),
        status: "503",
        template: r#"{"message": "the event bus failed; retry", "errorCode": "BusUnavailable"}"#,
    },
];

/// The values a cell's request models fix: literal for `bems provision`,
/// CloudFormation references (`{"Ref": "AWS::Region"}`) in the template.
#[derive(Debug, Clone)]
pub struct ModelCell {
    /// The cell id.
    pub cell_id: String,
    /// The partition count: `metadata.partition` is at most this.
    pub partitions: u8,
    /// The cell's Region, as a JSON value.
    pub region: Value,
    /// The cell's account, as a JSON value.
    pub account_id: Value,
}

impl From<&CellSpec> for ModelCell {
    fn from(spec: &CellSpec) -> ModelCell {
        ModelCell {
            cell_id: spec.cell_id().as_str().to_owned(),
            partitions: spec.partitions().get(),
            region: Value::String(spec.region().as_str().to_owned()),
            account_id: Value::String(spec.account_id().as_str().to_owned()),
        }
    }
}

/// The model to deploy for a stage of `cell`: the committed `bems-schema`
/// request schema, plus what makes an event routable in this cell, so that
/// an event no rule of the cell would route is refused with 400 instead of
/// accepted and dropped: `metadata.partition` at most the cell's partition
/// count, and `cellId`, `region` and `accountId` the cell's own. (Whether
/// an in-range partition is the invoice's own takes a hash no model can
/// express; the consumers check it and dead-letter a wrong one with the
/// reason.) See the module docs for `emulator`.
pub fn model(cell: &ModelCell, stage: Stage, emulator: bool) -> Result<Value, ProvisionError> {
    let mut schema = bems_schema::request_schema(stage)
        .map_err(|e| ProvisionError { step: format!("model for {stage}"), message: e.to_string() })?;
    let metadata =
        schema.pointer_mut("/properties/metadata/properties").and_then(Value::as_object_mut).ok_or_else(|| {
            ProvisionError {
                step: format!("model for {stage}"),
                message: "the request schema has no metadata properties".into(),
            }
        })?;
    let mut fix = |field: &str, keyword: &str, value: Value| -> Result<(), ProvisionError> {
        let property = metadata.get_mut(field).and_then(Value::as_object_mut).ok_or_else(|| ProvisionError {
            step: format!("model for {stage}"),
            message: format!("the request schema has no metadata.{field}"),
        })?;
        property.insert(keyword.to_owned(), value);
        Ok(())
    };
    fix("partition", "maximum", Value::from(cell.partitions))?;
    fix("cellId", "enum", Value::Array(vec![Value::String(cell.cell_id.clone())]))?;
    fix("region", "enum", Value::Array(vec![cell.region.clone()]))?;
    fix("accountId", "enum", Value::Array(vec![cell.account_id.clone()]))?;
    if emulator && let Some(Value::Array(all_of)) = schema.get_mut("allOf") {
        // Drop the currency/decimals branch; keep the transition table.
        all_of.retain(|branch| !branch.to_string().contains("multipleOf"));
    }
    Ok(schema)
}

/// Creates or completes the ingress of `spec`.
pub async fn provision_api(
    client: &aws_sdk_apigateway::Client,
    spec: &CellSpec,
    api_role_arn: &str,
    emulator: bool,
    report: &mut Report,
) -> Result<Ingress, ProvisionError> {
    let name = api_name(spec);
    let api_id = rest_api(client, &name, report).await?;

    // Resources: / -> /invoices -> /invoices/<stage>.
    let resources =
        client.get_resources().rest_api_id(&api_id).limit(500).send().await.map_err(|e| fail("list resources", &e))?;
    let mut by_path: HashMap<String, String> =
        resources.items().iter().filter_map(|r| Some((r.path()?.to_owned(), r.id()?.to_owned()))).collect();
    let root = by_path
        .get("/")
        .cloned()
        .ok_or_else(|| ProvisionError { step: "resources".into(), message: "no root resource".into() })?;
    let invoices = resource(client, &api_id, &root, "invoices", "/invoices", &mut by_path, report).await?;

    let validator = request_validator(client, &api_id, report).await?;
    let mut changed = false;
    for stage in Stage::ALL {
        let path = format!("/invoices/{stage}");
        let resource_id = resource(client, &api_id, &invoices, stage.as_str(), &path, &mut by_path, report).await?;
        changed |= model_up_to_date(client, &api_id, &ModelCell::from(spec), stage, emulator, report).await?;
        changed |=
            method(client, spec, &api_id, &resource_id, stage, &validator, api_role_arn, emulator, report).await?;
    }
    changed |= gateway_responses(client, &api_id, report).await?;
    let deployed = client.get_stage().rest_api_id(&api_id).stage_name(STAGE_NAME).send().await.is_ok();
    if changed || !deployed {
        client
            .create_deployment()
            .rest_api_id(&api_id)
            .stage_name(STAGE_NAME)
            .description("BEMS ingress, generated from the CellSpec and bems-schema")
            .send()
            .await
            .map_err(|e| fail("deploy", &e))?;
        client
            .update_stage()
            .rest_api_id(&api_id)
            .stage_name(STAGE_NAME)
            .patch_operations(patch("/*/*/throttling/burstLimit", &BURST_LIMIT.to_string()))
            .patch_operations(patch("/*/*/throttling/rateLimit", &RATE_LIMIT.to_string()))
            .send()
            .await
            .map_err(|e| fail("stage throttling", &e))?;
        report.push(
            "deployment",
            format!("{name}/{STAGE_NAME}"),
            if deployed { Change::Updated } else { Change::Created },
        );
    } else {
        report.push("deployment", format!("{name}/{STAGE_NAME}"), Change::Unchanged);
    }
    let api_key = key_and_plan(client, spec, &api_id, report).await?;
    Ok(Ingress { rest_api_id: api_id, api_key })
}

fn patch(path: &str, value: &str) -> PatchOperation {
    PatchOperation::builder().op(Op::Replace).path(path).value(value).build()
}

async fn rest_api(
    client: &aws_sdk_apigateway::Client,
    name: &str,
    report: &mut Report,
) -> Result<String, ProvisionError> {
    if let Some(id) = rest_api_id(client, name).await? {
        report.push("rest-api", name, Change::Unchanged);
        return Ok(id);
    }
    let created = client
        .create_rest_api()
        .name(name)
        .description("BEMS invoice event ingress")
        .send()
        .await
        .map_err(|e| fail(format!("create API {name}"), &e))?;
    report.push("rest-api", name, Change::Created);
    Ok(created.id().unwrap_or_default().to_owned())
}

async fn resource(
    client: &aws_sdk_apigateway::Client,
    api: &str,
    parent: &str,
    part: &str,
    path: &str,
    by_path: &mut HashMap<String, String>,
    report: &mut Report,
) -> Result<String, ProvisionError> {
    if let Some(id) = by_path.get(path) {
        report.push("resource", path, Change::Unchanged);
        return Ok(id.clone());
    }
    let created = client
        .create_resource()
        .rest_api_id(api)
        .parent_id(parent)
        .path_part(part)
        .send()
        .await
        .map_err(|e| fail(format!("create resource {path}"), &e))?;
    let id = created.id().unwrap_or_default().to_owned();
    by_path.insert(path.to_owned(), id.clone());
    report.push("resource", path, Change::Created);
    Ok(id)
}

async fn request_validator(
    client: &aws_sdk_apigateway::Client,
    api: &str,
    report: &mut Report,
) -> Result<String, ProvisionError> {
    let all = client.get_request_validators().rest_api_id(api).send().await.map_err(|e| fail("list validators", &e))?;
    if let Some(id) = all.items().iter().find(|v| v.name() == Some("body")).and_then(|v| v.id()) {
        report.push("validator", "body", Change::Unchanged);
        return Ok(id.to_owned());
    }
    let created = client
        .create_request_validator()
        .rest_api_id(api)
        .name("body")
        .validate_request_body(true)
        .validate_request_parameters(false)
        .send()
        .await
        .map_err(|e| fail("create validator", &e))?;
    report.push("validator", "body", Change::Created);
    Ok(created.id().unwrap_or_default().to_owned())
}

/// Returns whether the model changed.
async fn model_up_to_date(
    client: &aws_sdk_apigateway::Client,
    api: &str,
    cell: &ModelCell,
    stage: Stage,
    emulator: bool,
    report: &mut Report,
) -> Result<bool, ProvisionError> {
    let name = model_name(stage);
    let wanted = model(cell, stage, emulator)?;
    match client.get_model().rest_api_id(api).model_name(&name).send().await {
        Ok(found) => {
            let current: Option<Value> = found.schema().and_then(|s| serde_json::from_str(s).ok());
            if current.as_ref() == Some(&wanted) {
                report.push("model", name, Change::Unchanged);
                return Ok(false);
            }
            client
                .update_model()
                .rest_api_id(api)
                .model_name(&name)
                .patch_operations(patch("/schema", &wanted.to_string()))
                .send()
                .await
                .map_err(|e| fail(format!("update model {name}"), &e))?;
            report.push("model", name, Change::Updated);
        }
        Err(e) if not_found(&e) => {
            client
                .create_model()
                .rest_api_id(api)
                .name(&name)
                .content_type("application/json")
                .schema(wanted.to_string())
                .send()
                .await
                .map_err(|e| fail(format!("create model {name}"), &e))?;
            report.push("model", name, Change::Created);
        }
        Err(e) => return Err(fail(format!("read model {name}"), &e)),
    }
    Ok(true)
}

/// POST on a stage resource with its integration; returns whether anything changed.
#[allow(clippy::too_many_arguments)]
async fn method(
    client: &aws_sdk_apigateway::Client,
    spec: &CellSpec,
    api: &str,
    resource: &str,
    stage: Stage,
    validator: &str,
    role: &str,
    emulator: bool,
    report: &mut Report,
) -> Result<bool, ProvisionError> {
    let label = format!("POST /invoices/{stage}");
    let template = request_template(spec, emulator);
    if let Ok(existing) = client.get_method().rest_api_id(api).resource_id(resource).http_method("POST").send().await {
        let integration = existing.method_integration();
        // Every integration response as `INTEGRATION_RESPONSES` has it: a
        // method made before one changed is made again.
        let responses_current = INTEGRATION_RESPONSES.iter().all(|want| {
            integration.and_then(|i| i.integration_responses()).and_then(|r| r.get(want.status)).is_some_and(|r| {
                r.selection_pattern() == want.selection_pattern
                    && r.response_templates().and_then(|t| t.get("application/json")).map(String::as_str)
                        == Some(want.template)
            })
        });
        let statuses_current =
            METHOD_STATUSES.iter().all(|status| existing.method_responses().is_some_and(|m| m.contains_key(*status)));
        let same = existing.api_key_required() == Some(true)
            && existing.request_validator_id() == Some(validator)
            && integration.and_then(|i| i.request_templates()).and_then(|t| t.get("application/json"))
                == Some(&template)
            && responses_current
            && statuses_current;
        if same {
            report.push("method", label, Change::Unchanged);
            return Ok(false);
        }
        client
            .delete_method()
            .rest_api_id(api)
            .resource_id(resource)
            .http_method("POST")
            .send()
            .await
            .map_err(|e| fail(format!("replace {label}"), &e))?;
    }
    client
        .put_method()
        .rest_api_id(api)
        .resource_id(resource)
        .http_method("POST")
        .authorization_type("NONE")
        .api_key_required(true)
        .request_validator_id(validator)
        .request_models("application/json", model_name(stage))
        .send()
        .await
        .map_err(|e| fail(format!("create {label}"), &e))?;
    client
        .put_integration()
        .rest_api_id(api)
        .resource_id(resource)
        .http_method("POST")
        .r#type(IntegrationType::Aws)
        .integration_http_method("POST")
        .uri(format!("arn:aws:apigateway:{}:events:action/PutEvents", spec.region()))
        .credentials(role)
        .request_parameters("integration.request.header.X-Amz-Target", "'AWSEvents.PutEvents'")
        .request_parameters("integration.request.header.Content-Type", "'application/x-amz-json-1.1'")
        .request_templates("application/json", template)
        .passthrough_behavior("NEVER")
        .send()
        .await
        .map_err(|e| fail(format!("integrate {label}"), &e))?;
    for status in METHOD_STATUSES {
        client
            .put_method_response()
            .rest_api_id(api)
            .resource_id(resource)
            .http_method("POST")
            .status_code(status)
            .send()
            .await
            .map_err(|e| fail(format!("{label} response {status}"), &e))?;
    }
    for response in INTEGRATION_RESPONSES {
        client
            .put_integration_response()
            .rest_api_id(api)
            .resource_id(resource)
            .http_method("POST")
            .status_code(response.status)
            .set_selection_pattern(response.selection_pattern.map(str::to_owned))
            .response_templates("application/json", response.template)
            .send()
            .await
            .map_err(|e| fail(format!("{label} integration response {}", response.status), &e))?;
    }
    report.push("method", label, Change::Created);
    Ok(true)
}

/// JSON bodies for the gateway's own answers; returns whether any changed.
async fn gateway_responses(
    client: &aws_sdk_apigateway::Client,
    api: &str,
    report: &mut Report,
) -> Result<bool, ProvisionError> {
    let mut changed = false;
    for &(kind, status, body) in GATEWAY_RESPONSES {
        let kind = GatewayResponseType::from(kind);
        let current = client.get_gateway_response().rest_api_id(api).response_type(kind.clone()).send().await.ok();
        let same = current.as_ref().is_some_and(|c| {
            c.status_code() == Some(status)
                && c.response_templates().and_then(|t| t.get("application/json")).map(String::as_str) == Some(body)
        });
        if same {
            report.push("gateway-response", kind.as_str(), Change::Unchanged);
            continue;
        }
        client
            .put_gateway_response()
            .rest_api_id(api)
            .response_type(kind.clone())
            .status_code(status)
            .response_templates("application/json", body)
            .send()
            .await
            .map_err(|e| fail(format!("gateway response {}", kind.as_str()), &e))?;
        report.push("gateway-response", kind.as_str(), Change::Created);
        changed = true;
    }
    Ok(changed)
}

async fn key_and_plan(
    client: &aws_sdk_apigateway::Client,
    spec: &CellSpec,
    api: &str,
    report: &mut Report,
) -> Result<String, ProvisionError> {
    use aws_sdk_apigateway::types::{ApiStage, ThrottleSettings};
    let key_name = producers_name(spec);
    let (key_id, key_value) = match producers_key(client, &key_name).await? {
        Some(key) => {
            report.push("api-key", &key_name, Change::Unchanged);
            key
        }
        None => {
            let k = client
                .create_api_key()
                .name(&key_name)
                .enabled(true)
                .send()
                .await
                .map_err(|e| fail("create key", &e))?;
            report.push("api-key", &key_name, Change::Created);
            (k.id().unwrap_or_default().to_owned(), k.value().unwrap_or_default().to_owned())
        }
    };
    let plan_name = producers_name(spec);
    let plans = client.get_usage_plans().send().await.map_err(|e| fail("list usage plans", &e))?;
    let plan_id = match plans.items().iter().find(|p| p.name() == Some(plan_name.as_str())).and_then(|p| p.id()) {
        Some(id) => {
            report.push("usage-plan", &plan_name, Change::Unchanged);
            id.to_owned()
        }
        None => {
            let p = client
                .create_usage_plan()
                .name(&plan_name)
                .api_stages(ApiStage::builder().api_id(api).stage(STAGE_NAME).build())
                .throttle(ThrottleSettings::builder().burst_limit(BURST_LIMIT).rate_limit(RATE_LIMIT).build())
                .send()
                .await
                .map_err(|e| fail("create usage plan", &e))?;
            report.push("usage-plan", &plan_name, Change::Created);
            p.id().unwrap_or_default().to_owned()
        }
    };
    let plan_keys =
        client.get_usage_plan_keys().usage_plan_id(&plan_id).send().await.map_err(|e| fail("list plan keys", &e))?;
    if plan_keys.items().iter().any(|k| k.id() == Some(key_id.as_str())) {
        report.push("usage-plan-key", &key_name, Change::Unchanged);
    } else {
        client
            .create_usage_plan_key()
            .usage_plan_id(&plan_id)
            .key_id(&key_id)
            .key_type("API_KEY")
            .send()
            .await
            .map_err(|e| fail("attach key to plan", &e))?;
        report.push("usage-plan-key", &key_name, Change::Created);
    }
    Ok(key_value)
}

/// Deletes the ingress of `spec`: usage plan, key and REST API.
pub async fn teardown_api(
    client: &aws_sdk_apigateway::Client,
    spec: &CellSpec,
    report: &mut Report,
) -> Result<(), ProvisionError> {
    let name = producers_name(spec);
    let plans = client.get_usage_plans().send().await.map_err(|e| fail("list usage plans", &e))?;
    for plan in plans.items().iter().filter(|p| p.name() == Some(name.as_str())) {
        let id = plan.id().unwrap_or_default();
        // A plan with stages attached cannot be deleted: detach them first.
        for stage in plan.api_stages() {
            let path = "/apiStages";
            let value = format!("{}:{}", stage.api_id().unwrap_or_default(), stage.stage().unwrap_or_default());
            client
                .update_usage_plan()
                .usage_plan_id(id)
                .patch_operations(PatchOperation::builder().op(Op::Remove).path(path).value(value).build())
                .send()
                .await
                .map_err(|e| fail("detach usage plan", &e))?;
        }
        client.delete_usage_plan().usage_plan_id(id).send().await.map_err(|e| fail("delete usage plan", &e))?;
        report.push("usage-plan", &name, Change::Deleted);
    }
    let keys = client.get_api_keys().name_query(&name).send().await.map_err(|e| fail("list keys", &e))?;
    for key in keys.items().iter().filter(|k| k.name() == Some(name.as_str())) {
        client
            .delete_api_key()
            .api_key(key.id().unwrap_or_default())
            .send()
            .await
            .map_err(|e| fail("delete key", &e))?;
        report.push("api-key", &name, Change::Deleted);
    }
    let api_name = api_name(spec);
    let apis = client.get_rest_apis().limit(500).send().await.map_err(|e| fail("list APIs", &e))?;
    for api in apis.items().iter().filter(|a| a.name() == Some(api_name.as_str())) {
        client
            .delete_rest_api()
            .rest_api_id(api.id().unwrap_or_default())
            .send()
            .await
            .map_err(|e| fail("delete API", &e))?;
        report.push("rest-api", &api_name, Change::Deleted);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bems_core::fields::{AccountId, CellId, Region};
    use bems_core::partition::PartitionCount;

    fn spec() -> CellSpec {
        CellSpec::new(
            CellId::new("c1").unwrap(),
            Region::new("eu-west-1").unwrap(),
            AccountId::new("123456789012").unwrap(),
            PartitionCount::new(2).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn templates_put_the_body_on_the_cells_bus() {
        let aws = request_template(&spec(), false);
        assert!(aws.contains(r#""EventBusName":"bems-c1""#) && aws.contains(r#"replaceAll("\\'","'")"#), "{aws}");
        assert!(!request_template(&spec(), true).contains("replaceAll"));
    }

    #[test]
    fn emulator_models_drop_only_the_decimal_rule() {
        let cell = ModelCell::from(&spec());
        let full = model(&cell, Stage::Posting, false).unwrap();
        let emulator = model(&cell, Stage::Posting, true).unwrap();
        assert!(full.to_string().contains("multipleOf"));
        assert!(!emulator.to_string().contains("multipleOf"));
        assert_eq!(emulator["allOf"].as_array().map(Vec::len), Some(1), "the transition branch stays");
        assert_eq!(model_name(Stage::Posting), "InvoicePostingRequest");
    }
}
